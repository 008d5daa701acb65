"""Patient and side from a photograph's file name (12_left.jpg, 12-R.png, patient7_OD.tif): how the two
eyes of a patient are found where there is no manifest, for splits that keep patients whole and for
pairing files at prediction time."""

from __future__ import annotations

import re

# <id><sep><side>.<ext>, e.g. 12_left.jpg, 12-L.png, 12_R.jpeg, patient7_right.tif (case-insensitive)
DEFAULT_PATTERN = r"^(?P<id>.+?)[_\-. ](?P<side>left|right|l|r|os|od)$"
SIDES = {"left": "left", "l": "left", "os": "left", "right": "right", "r": "right", "od": "right"}


def patient_and_side(stem: str, pattern: str = DEFAULT_PATTERN) -> tuple[str, str] | None:
    """(patient id, "left" | "right") from a file name without its suffix, or None if it names no side."""
    match = re.match(pattern, stem, re.IGNORECASE)
    side = SIDES.get(match.group("side").lower()) if match else None
    return (match.group("id"), side) if side else None
