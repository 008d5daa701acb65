"""Fellow-eye evidence for a single-eye model: an eye's probabilities blended with its fellow eye's.

The two eyes of a patient share the systemic disease (diabetic retinopathy is bilateral in most
patients), the age and the camera; a single-eye model sees one image. Blending each eye's
log-probabilities with those of the other eye of the same patient,

    log p'(eye) = (1 - w) log p(eye) + w log p(fellow)   (renormalised),

lets the fellow eye's photograph count as evidence without any retraining. The label stays the eye's
own; w in [0, 0.5] (the eye never counts less than its fellow) is chosen on validation macro-AUC after
training and stored in the checkpoint beside the temperature. The fellow may be any photograph of the
same patient in the manifest, labelled or not: its image is an input, never its label.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .data import Record, read_records
from .metrics import classification_metrics

WEIGHTS = tuple(round(0.05 * i, 2) for i in range(11))  # 0, 0.05, ..., 0.5


def stored_weight(calibration: dict | None) -> float:
    """The fellow-eye weight in a checkpoint's calibration; 0 (no blend) for one calibrated before it."""
    return float(((calibration or {}).get("fellow_eye") or {}).get("weight", 0.0))


def fellow_of(records: list[Record], every_record: list[Record]) -> list[Record | None]:
    """The other eye of each record's patient, from every image of the data; None where the data give
    no patient or eye side (a manifest's patient_id and eye, a folder's file names such as 12_left.jpg),
    or the patient has two photographs of that eye side."""
    by_side: dict[tuple[str, str], list[Record]] = {}
    for r in every_record:
        if r.group.startswith("patient:") and r.eye in ("left", "right"):
            by_side.setdefault((r.group, r.eye), []).append(r)
    out = []
    for r in records:
        other = {"left": "right", "right": "left"}.get(r.eye or "")
        candidates = by_side.get((r.group, other), []) if other and r.group.startswith("patient:") else []
        out.append(candidates[0] if len(candidates) == 1 else None)  # two of one side: which is ambiguous
    return out


def blend(prob: np.ndarray, fellow_prob: np.ndarray, has_fellow: np.ndarray, weight: float) -> np.ndarray:
    """Rows with a fellow: softmax((1 - w) log p + w log p_fellow); the others unchanged."""
    if weight == 0 or not has_fellow.any():
        return prob
    log_p = np.log(np.clip(prob, 1e-12, 1.0))
    log_f = np.log(np.clip(fellow_prob, 1e-12, 1.0))
    z = np.where(has_fellow[:, None], (1 - weight) * log_p + weight * log_f, log_p)
    z -= z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def choose_weight(prob, fellow_prob, has_fellow, y, classes: list[str], weights=WEIGHTS) -> dict:
    """The weight with the best macro-AUC on these (validation) eyes; ties go to the smaller weight."""
    scores = {
        w: classification_metrics(y, blend(prob, fellow_prob, has_fellow, w), classes)["macro_auc"]
        for w in weights
    }
    best = max(weights, key=lambda w: (scores[w], -w))
    return {
        "weight": float(best),
        "val_macro_auc": float(scores[best]),
        "val_macro_auc_alone": float(scores[0.0]) if 0.0 in scores else None,
        "eyes_with_fellow": int(has_fellow.sum()),
        "eyes": int(len(y)),
        "fitted_on": "val",
    }


def fellow_probabilities(
    predict, records: list[Record], prob: np.ndarray, source: Path
) -> tuple[np.ndarray, np.ndarray]:
    """The fellow eye's probabilities for each record ([N, K], and a mask of rows that have one).

    `prob` holds the records' own probabilities (reused where the fellow is among them); `predict(paths)`
    returns (probabilities, indices of the paths it could read) for the others. `source`: the manifest
    or folder of class folders the records come from."""
    has = np.zeros(len(records), dtype=bool)
    out = np.zeros_like(prob)
    fellows = fellow_of(records, read_records(source))
    position = {r.key: i for i, r in enumerate(records)}
    missing = sorted(
        {f.key: f for f in fellows if f is not None and f.key not in position}.values(), key=lambda f: f.key
    )
    extra, extra_position = None, {}
    if missing:
        extra, ok = predict([f.path for f in missing])
        extra_position = {missing[i].key: row for row, i in enumerate(ok)}
    for i, f in enumerate(fellows):
        if f is None:
            continue
        if f.key in position:
            out[i], has[i] = prob[position[f.key]], True
        elif f.key in extra_position:
            out[i], has[i] = extra[extra_position[f.key]], True
    return out, has
