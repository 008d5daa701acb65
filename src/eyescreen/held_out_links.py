"""Held-out eyes that are not new to the model, and patients who are one person.

`photo_links` finds one photograph saved twice, or one eye photographed again, under two patient ids.
`train` records those links in the checkpoint (`linked_photographs`: groups of image keys). A split made
by `train` keeps such patients in one split; a split given with `--split` may part them, and `evaluate`
then names the held-out eyes whose twin is in another split and scores the split without them. Inside
one split, linked patients are one person: the patient bootstrap resamples them together.
"""

from __future__ import annotations

import numpy as np

from .components import linked_patient_sets


def recorded_links(records: list, links: list[list[int]], max_patients: int) -> list[list[str]]:
    """What the checkpoint keeps of `links` (groups of indices into `records`): the image keys of each
    group, leaving out the groups of a patient set (`linked_patient_sets`) of more than `max_patients`:
    not one person's visits but a shared artefact, which `keep_linked_together` leaves where the split
    put it, by the same rule."""
    sets = linked_patient_sets([r.group for r in records], links)
    crowd = {g for s in sets if len(s) > max_patients for g in s}
    kept = []
    for group in links:
        keys = list(dict.fromkeys(records[k].key for k in group))
        if len(keys) > 1 and records[group[0]].group not in crowd:
            kept.append(keys)
    return kept


def seen_elsewhere(keys: list[str], split: dict, links: list[list[str]], part: str) -> dict[str, list[str]]:
    """For each of `keys` (eyes of the split `part`) linked to an eye in another split: those eyes, as
    "key (split)". In the order of `keys`."""
    twins: dict[str, list[str]] = {}
    for group in links:
        others = [f"{k} ({split[k]})" for k in group if k in split and split[k] != part]
        if others:
            for k in group:
                if split.get(k) == part:
                    twins.setdefault(k, []).extend(others)
    return {k: twins[k] for k in keys if k in twins}


def person_units(keys: list[str], patients: list[str], links: list[list[str]]) -> np.ndarray:
    """Each eye's bootstrap unit: its patient id, or, for patients linked to others among these eyes, the
    first id of their set (one person registered twice is resampled as one)."""
    position = {k: i for i, k in enumerate(keys)}
    among = [[position[k] for k in group if k in position] for group in links]
    unit = {p: s[0] for s in linked_patient_sets(list(patients), among) for p in s}
    return np.array([unit.get(p, p) for p in patients])


def patient_units(patients: list[str], eye_patients, eye_units) -> np.ndarray | None:
    """The bootstrap unit of each of `patients` (record groups) for a report per patient: its eyes' unit
    (`eye_units`, one per eye of `eye_patients`, from `person_units`), so that linked patients are
    resampled together there too; a patient without a scored eye is its own unit. None where the eyes'
    units are (the patient ids themselves)."""
    if eye_units is None:
        return None
    unit = dict(zip(eye_patients, eye_units, strict=True))
    return np.array([unit.get(p, p) for p in patients])
