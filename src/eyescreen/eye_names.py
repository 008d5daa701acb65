"""Patient and side from a photograph's file name (12_left.jpg, 12-R.png, patient7_OD.tif), or for a DICOM
file whose name says neither (often a UID) from its Patient ID and laterality: how the two eyes of a
patient are found where there is no manifest, for splits that keep patients whole and for pairing files at
prediction time."""

from __future__ import annotations

import re
from pathlib import Path

# <id><sep><side>[<sep><n>].<ext>, e.g. 12_left.jpg, 12-L.png, 12_R.jpeg, patient7_right.tif (case-insensitive);
# a number after the side tells several photographs of one eye apart (12_left_2.jpg, 12_L2.png, 12_left (2).jpg):
# clinics often take two fields per eye, one centred on the disc and one on the macula
DEFAULT_PATTERN = r"^(?P<id>.+?)[_\-. ](?P<side>left|right|l|r|os|od)(?:[_\-. ]?\(?\d{1,3}\)?)?$"
SIDES = {"left": "left", "l": "left", "os": "left", "right": "right", "r": "right", "od": "right"}


DICOM_SIDES = {"R": "right", "L": "left"}  # (0020,0062) Image Laterality; B (both) and U (unpaired): none


def patient_and_side_of(path: Path, pattern: str = DEFAULT_PATTERN) -> tuple[str, str] | None:
    """(patient id, side) of an image file: by its name, else, for DICOM, by its tags."""
    found = patient_and_side(path.stem, pattern)
    if found is None and path.suffix.lower() == ".dcm":
        found = _dicom_patient_and_side(path)
    return found


def _dicom_patient_and_side(path: Path) -> tuple[str, str] | None:
    try:
        import pydicom

        ds = pydicom.dcmread(path, stop_before_pixels=True)
    except Exception:  # no pydicom, or a damaged file: the image loader names the problem later
        return None
    patient = str(ds.get("PatientID", "") or "").strip()
    laterality = ds.get("ImageLaterality") or ds.get("Laterality") or ""
    side = DICOM_SIDES.get(str(laterality).strip().upper())
    return (patient, side) if patient and side else None


def checked_pattern(pattern: str) -> str:
    """A user's naming pattern, or a ValueError saying what is wrong with it (before any file is read)."""
    try:
        groups = re.compile(pattern).groupindex
    except re.error as e:
        raise ValueError(f"pair pattern {pattern!r} is not a regular expression: {e}") from None
    missing = [name for name in ("id", "side") if name not in groups]
    if missing:
        raise ValueError(
            f"pair pattern {pattern!r} has no group named {' or '.join(missing)}: write them as (?P<id>...) and "
            "(?P<side>...), e.g. " + DEFAULT_PATTERN
        )
    return pattern


def patient_and_side(stem: str, pattern: str = DEFAULT_PATTERN) -> tuple[str, str] | None:
    """(patient id, "left" | "right") from a file name without its suffix, or None if it names no side."""
    match = re.match(pattern, stem, re.IGNORECASE)
    side = SIDES.get(match.group("side").lower()) if match else None
    return (match.group("id"), side) if side else None
