"""Predict classes for files or folders, streaming in chunks; unreadable files are listed, not fatal,
and an interrupted job resumes where it stopped."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import torch
from tqdm import tqdm

from .batch_output import BatchOutput, print_problems
from .calibrate import apply_temperature, class_weights, decide, describe_outputs
from .checkpoint import load_model
from .data import list_images
from .fellow import stored_weight
from .inference import predict_proba, resolve_device, resolve_precision
from .models import takes_both_eyes
from .preprocess import Preprocessing, preprocess_noted, read_all


def predict(
    inputs: list[str | Path],
    checkpoint: str | Path,
    out_csv: str | Path,
    batch_size: int = 32,
    device: str = "auto",
    precision: str = "auto",
    progress: bool = True,
    resume: bool = False,
) -> dict:
    """Write one CSV row per file: predicted class (by the checkpoint's decision rule), per-class
    probabilities (temperature-scaled when the checkpoint is calibrated), the referable flag at the
    checkpoint's operating point, or the error. `resume`: keep the rows of an interrupted run of the
    same checkpoint into `out_csv` and predict only the other files (unreadable ones again)."""
    dev = resolve_device(device)
    model, meta = load_model(checkpoint, dev)
    if takes_both_eyes(meta["model"]):
        raise ValueError(
            f"{checkpoint}: a both-eye model decides per patient: give it pairs of photographs with "
            "`eyescreen predict --pairs` (files named like 12_left.jpg / 12_right.jpg)"
        )
    classes, norm = meta["classes"], meta["normalization"]
    calibration = meta.get("calibration", {})
    temperature = calibration.get("temperature", 1.0)
    weights = class_weights(calibration)
    referable = calibration.get("referable")
    prep = Preprocessing(**meta["preprocessing"])
    prec = resolve_precision(precision, dev)
    files = list_images(inputs)
    extra = ["referable"] if referable else []
    header = (
        ["file", "predicted", "probability"] + [f"prob_{c}" for c in classes] + extra + ["error", "warning"]
    )
    n_ok, failures = 0, []
    with BatchOutput(out_csv, header, checkpoint, resume) as out:
        files = [path for path in files if str(path) not in out.done]
        # A resumed job's warnings include those of the rows it kept (unreadable rows are tried again).
        warnings = [row["warning"] for row in out.kept_rows if row.get("warning")]
        bar = tqdm(total=len(files), desc="predicting", disable=not progress)
        read = partial(preprocess_noted, prep=prep)
        # Chunks keep memory flat however many files there are; a chunk's files are read on threads.
        for start in range(0, len(files), batch_size):
            chunk, arrays = files[start : start + batch_size], []
            good, notes = [], []
            for path, (result, error) in zip(chunk, read_all(read, chunk), strict=True):
                if error is None:
                    image, note = result
                    arrays.append(torch.from_numpy(image).permute(2, 0, 1))
                    good.append(path)
                    notes.append("; ".join(note))
                    warnings.extend(note)
                else:
                    failures.append((path, error))
                    out.write([str(path), "", ""] + [""] * (len(classes) + len(extra)) + [error, ""])
            if arrays:
                prob = predict_proba(model, torch.stack(arrays), norm["mean"], norm["std"], dev, prec)
                prob = apply_temperature(prob, temperature)
                for path, p, note in zip(good, prob, notes, strict=True):
                    k = int(decide(p, weights))
                    flag = []
                    if referable:
                        score = 1.0 - p[classes.index(referable["normal_class"])]
                        flag = ["yes" if score > referable["threshold"] else "no"]
                    out.write(
                        [str(path), classes[k], f"{p[k]:.6f}"] + [f"{v:.6f}" for v in p] + flag + ["", note]
                    )
                n_ok += len(good)
            out.flush()
            bar.update(len(chunk))
        bar.close()
        resumed = out.kept
    print_problems("could not read", [m for _, m in failures], f"the 'error' column of {out_csv}")
    print_problems("warning", warnings, f"the 'warning' column of {out_csv}")
    return {
        "csv": Path(out_csv),
        "predicted": n_ok,
        "resumed": resumed,
        "failed": failures,
        "warnings": warnings,
        "legend": describe_outputs(calibration),
        "fellow_weight": stored_weight(calibration),  # what `predict --pairs` would blend in
    }
