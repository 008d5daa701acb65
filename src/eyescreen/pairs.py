"""Pair the two eyes of a patient: from a manifest (patient_id + eye) or from file names in a folder;
and derive a patient-level label from the eyes' labels by a documented rule."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .data import Record, list_images
from .eye_names import DEFAULT_PATTERN, SIDES, checked_pattern, patient_and_side_of


@dataclass(frozen=True)
class Pair:
    """A patient's eyes: the first photograph of each side, its label, and any further photographs of a
    side (several fields of one eye, from files named 12_left_1.jpg, 12_left_2.jpg)."""

    patient: str
    right: Path | None
    left: Path | None
    right_label: str | None = None
    left_label: str | None = None
    more_right: tuple[Path, ...] = ()
    more_left: tuple[Path, ...] = ()

    def photographs(self, side: str) -> tuple[Path, ...]:
        first = getattr(self, side)
        return () if first is None else (first, *getattr(self, f"more_{side}"))

    @property
    def several_of_a_side(self) -> bool:
        return bool(self.more_right or self.more_left)


def pair_files(paths: list[str | Path], pattern: str = DEFAULT_PATTERN) -> tuple[list[Pair], list[Path]]:
    """Group image files (or folders of them) into patients by name (DICOM: by its tags where its name says
    nothing); returns (pairs, unpaired files).

    A file whose name does not match the pattern is reported as unpaired rather than guessed. A patient
    with only one side is a pair with one eye; several photographs of a side are kept in name order, the
    first as `right`/`left` and the others in `more_right`/`more_left`.
    """
    checked_pattern(pattern)
    sides: dict[str, dict[str, list[Path]]] = {}
    unpaired: list[Path] = []
    for path in list_images(list(paths)):
        found = patient_and_side_of(path, pattern)
        if found is None:
            unpaired.append(path)
            continue
        patient, side = found
        sides.setdefault(patient, {}).setdefault(side, []).append(path)
    pairs = []
    for patient, found in sorted(sides.items()):
        right, left = sorted(found.get("right", [])), sorted(found.get("left", []))
        pairs.append(Pair(patient, right[0] if right else None, left[0] if left else None,
                          more_right=tuple(right[1:]), more_left=tuple(left[1:])))  # fmt: skip
    return pairs, unpaired


def pair_records(records: list[Record]) -> tuple[list[Pair], list[Record]]:
    """Pairs from manifest records by patient id and eye; records without a usable eye are returned apart."""
    by_patient: dict[str, dict[str, Record]] = {}
    apart = []
    for r in records:
        side = SIDES.get((r.eye or "").lower())
        if side is None or not r.group.startswith("patient:") or side in by_patient.get(r.group, {}):
            apart.append(r)
            continue
        by_patient.setdefault(r.group, {})[side] = r
    pairs = []
    for patient, eyes in sorted(by_patient.items()):
        right, left = eyes.get("right"), eyes.get("left")
        pairs.append(
            Pair(
                patient.split(":", 1)[1],
                right.path if right else None,
                left.path if left else None,
                right.label if right else None,
                left.label if left else None,
            )
        )
    return pairs, apart


def patient_label(eye_labels: list[str | None], classes: list[str], normal_class: str = "normal",
                  two_diseases: str = "exclude") -> str | None:  # fmt: skip
    """The patient's label from the labels of the eyes present.

    All labelled eyes normal -> normal. Any disease in either eye -> that disease. Two different
    diseases -> `two_diseases`: "exclude" (None: no patient-level label; the eyes still train and are
    scored per eye) or "priority" (the disease listed first in `classes`).
    """
    labels = [lab for lab in eye_labels if lab is not None]
    if not labels:
        return None
    diseases = sorted({lab for lab in labels if lab != normal_class}, key=classes.index)
    if not diseases:
        return normal_class
    if len(diseases) == 1:
        return diseases[0]
    if two_diseases == "priority":
        return diseases[0]
    if two_diseases == "exclude":
        return None
    raise ValueError(f"two_diseases={two_diseases!r}: use exclude or priority")
