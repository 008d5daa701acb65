"""`eyescreen predict --pairs`: one decision per patient from a folder of paired left/right photographs.

With a both-eye checkpoint the patient decision is the model's own (fusion head); with a single-eye
checkpoint each eye is predicted, blended with its fellow eye at the weight fitted on validation
(fellow.py; none in checkpoints calibrated before it), and the patient takes the probabilities of the eye
with the higher disease score, 1 - P(normal) ("any disease in either eye"). Either way the row says
which eye drove it.

A patient with several photographs of a side (two fields per eye: 12_left_1.jpg, 12_left_2.jpg) is
screened on every right-left combination of them, and takes the combination with the higher disease score,
as it takes the eye with the higher score: its row names the photographs of that combination, and the
others in `other_files`.
"""

from __future__ import annotations

import sys
from functools import partial
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from .batch_output import BatchOutput, print_problems
from .calibrate import apply_temperature, class_weights, decide, describe_outputs, eye_calibration
from .checkpoint import load_model
from .fellow import blend, stored_weight
from .inference import autocast, predict_proba, prepare_batch, resolve_device, resolve_precision
from .models import takes_both_eyes
from .pairs import DEFAULT_PATTERN, pair_files
from .preprocess import Preprocessing, Views, load_views, preprocess_noted

SIDES = ("right", "left")


def predict_pairs(
    inputs: list[str | Path],
    checkpoint: str | Path,
    out_csv: str | Path,
    pattern: str = DEFAULT_PATTERN,
    batch_size: int = 16,
    device: str = "auto",
    precision: str = "auto",
    progress: bool = True,
    resume: bool = False,
) -> dict:
    """`resume`: keep the predicted patients of an interrupted run of the same checkpoint into
    `out_csv` and predict only the others."""
    dev = resolve_device(device)
    model, meta = load_model(checkpoint, dev)
    classes, norm = meta["classes"], meta["normalization"]
    prep, prec = Preprocessing(**meta["preprocessing"]), resolve_precision(precision, dev)
    calibration = meta.get("calibration", {})
    temperature, referable = calibration.get("temperature", 1.0), calibration.get("referable")
    # a both-eye model's eyes have their own temperature
    eye_temperature = eye_calibration(calibration).get("temperature", 1.0)
    weights = class_weights(calibration)
    fellow_weight = stored_weight(calibration)
    normal = (
        classes.index(referable["normal_class"])
        if referable
        else (classes.index("normal") if "normal" in classes else None)
    )
    pairs, unpaired = pair_files(inputs, pattern)
    binocular = takes_both_eyes(meta["model"])
    header = ["patient", "right_file", "left_file", "other_files"]
    header += [f"{side}_prob_{c}" for side in SIDES for c in classes]
    header += ["predicted", "probability"] + [f"prob_{c}" for c in classes] + ["driven_by"]
    header += (["referable"] if referable else []) + ["error", "warning"]
    written, failed = 0, []
    out_csv = Path(out_csv)
    output = BatchOutput(
        out_csv, header, checkpoint, resume, key="patient", is_done=lambda row: bool(row["predicted"])
    )

    read = partial(preprocess_noted, prep=prep)  # a chunk's photographs are read on threads
    with output as out:
        pairs = [pair for pair in pairs if pair.patient not in out.done]
        # As `predict`: a resumed job's warnings include those of the patients it kept.
        warnings = [row["warning"] for row in out.kept_rows if row.get("warning")]
        bar = tqdm(total=len(pairs), desc="predicting patients", disable=not progress)
        for start in range(0, len(pairs), batch_size):
            chunk = pairs[start : start + batch_size]
            views = load_views([(pair.photographs("right"), pair.photographs("left")) for pair in chunk],
                               read, prep.image_size)  # fmt: skip
            errors = [[message for _, message in eye_errors] for eye_errors in views.errors]
            failed += [message for messages in errors for message in messages]
            mask = views.mask
            usable = mask.any(1)
            eye_prob = np.full((len(mask), 2, len(classes)), np.nan)
            patient_prob = np.full((len(mask), len(classes)), np.nan)
            driver = [""] * len(mask)
            if usable.any():
                e, p, d = predict_views(
                    model, views.select(usable), binocular, norm, dev, prec, normal, fellow_weight
                )
                eye_prob[usable.numpy()], patient_prob[usable.numpy()] = calibrated(
                    e, p, eye_temperature, temperature
                )
                for i, k in zip(np.flatnonzero(usable.numpy()), d, strict=True):
                    driver[i] = SIDES[k]
                eye_prob[~mask.numpy()] = np.nan  # an absent eye has no prediction
            chosen = decisive_views(patient_prob, views.owner, len(chunk), normal)
            for i, (pair, v) in enumerate(zip(chunk, chosen, strict=True)):
                row = [pair.patient, *files_of(pair, views.paths[v])]
                row += ["" if np.isnan(x) else f"{x:.6f}" for x in eye_prob[v].ravel()]
                if mask[v].any():
                    k = int(decide(patient_prob[v], weights))
                    row += (
                        [classes[k], f"{patient_prob[v, k]:.6f}"]
                        + [f"{x:.6f}" for x in patient_prob[v]]
                        + [driver[v]]
                    )
                    if referable:
                        row.append("yes" if 1 - patient_prob[v, normal] > referable["threshold"] else "no")
                    written += 1
                else:
                    row += ["", ""] + [""] * len(classes) + [""] + ([""] if referable else [])
                out.write(row + ["; ".join(errors[i]), "; ".join(views.notes[i])])
                warnings.extend(views.notes[i])
            out.flush()
            bar.update(len(chunk))
        bar.close()
    if unpaired:
        (out_csv.with_suffix(".unpaired.txt")).write_text("\n".join(map(str, unpaired)) + "\n")
        print(
            f"{len(unpaired)} file(s) could not be paired (see {out_csv.with_suffix('.unpaired.txt')})",
            file=sys.stderr,
        )
    print_problems("could not read", failed, f"the 'error' column of {out_csv}")
    print_problems("warning", warnings, f"the 'warning' column of {out_csv}")
    return {
        "csv": out_csv,
        "patients": written,
        "resumed": output.kept,
        "unpaired": unpaired,
        "several": sum(pair.several_of_a_side for pair in pairs),
        "failed": failed,
        "warnings": warnings,
        "legend": describe_outputs(calibration),
    }


def predict_views(model, views: Views, binocular: bool, norm, device, precision, normal, fellow_weight=0.0):
    """Eye probabilities [V, 2, K], patient probabilities [V, K] and the driving eye of every view (each
    with an eye at least). A single-eye model sees each photograph once, however many views hold it, and
    blends each eye with its fellow at `fellow_weight` where both are present."""
    if not binocular:
        photo_prob = predict_proba(model, views.photos, norm["mean"], norm["std"], device, precision)
        return eye_patients(photo_prob[views.index.clamp(min=0).numpy()], views.mask, normal, fellow_weight)
    with torch.inference_mode():
        x = prepare_batch(views.images, device, norm["mean"], norm["std"], channels_last=False)
        mask = views.mask.to(device)
        with autocast(device, precision):
            eye_logits, logits = model(x, mask)
            weights = model.eye_weights(x, mask)
    eyes = torch.softmax(eye_logits.float(), -1).cpu().numpy()
    patient = torch.softmax(logits.float(), -1).cpu().numpy()
    return eyes, patient, weights.float().argmax(1).cpu().numpy()


def calibrated(eyes: np.ndarray, patients: np.ndarray, eye_temperature: float, temperature: float):
    """predict_views' eye [V, 2, K] and patient [V, K] probabilities, each scaled by its own temperature."""
    flat = apply_temperature(eyes.reshape(-1, eyes.shape[-1]), eye_temperature)
    return flat.reshape(eyes.shape), apply_temperature(patients, temperature)


def eye_patients(eyes: np.ndarray, mask, normal, fellow_weight=0.0):
    """A single-eye model's patients from its eye probabilities [B, 2, K] (an absent eye's are ignored):
    each eye blended with its fellow where both are present, and the eye with the higher disease score."""
    if fellow_weight:
        both = mask.all(1).numpy()
        right, left = eyes[:, 0], eyes[:, 1]
        eyes = np.stack(
            [blend(right, left, both, fellow_weight), blend(left, right, both, fellow_weight)], axis=1
        )
    disease = 1 - eyes[..., normal] if normal is not None else eyes.max(-1)
    disease = np.where(mask.numpy(), disease, -np.inf)
    driver = disease.argmax(1)
    return eyes, eyes[np.arange(len(eyes)), driver], driver


def files_of(pair, view: tuple) -> list[str]:
    """right_file, left_file (the view's photographs; a side with none read names its first photograph)
    and other_files (the patient's other photographs)."""
    named = [path or next(iter(pair.photographs(side)), "") for path, side in zip(view, SIDES, strict=True)]
    others = [str(path) for side in SIDES for path in pair.photographs(side) if path not in named]
    return [str(named[0]), str(named[1]), "; ".join(others)]


def decisive_views(patient_prob: np.ndarray, owner: np.ndarray, patients: int, normal) -> list[int]:
    """For each patient, the view (a right-left combination of its photographs) with the highest disease
    score, 1 - P(normal) (with no normal class, the highest probability); a patient whose views hold no
    eye read keeps its one view."""
    score = 1 - patient_prob[:, normal] if normal is not None else patient_prob.max(1)
    score = np.where(np.isnan(score), -np.inf, score)
    return [int(np.flatnonzero(owner == i)[score[owner == i].argmax()]) for i in range(patients)]
