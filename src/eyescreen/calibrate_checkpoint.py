"""Calibrate a checkpoint on its own validation split, and store what is fitted in it.

What is fitted (the math is calibrate.py's and fellow.py's): the temperature, the decision rule and the
screening threshold; a both-eye model's eye head apart; a single-eye model's fellow-eye weight. `train`
calls it at the end of a run with the validation probabilities it has; `eyescreen calibrate` (and
`ensemble`) call it on a checkpoint, predicting them afresh.
"""

from __future__ import annotations

import sys

from .calibrate import calibrate, describe
from .checkpoint import load_model, save_model
from .data import Dataset, checkpoint_data, load_dataset, subset
from .fellow import choose_weight, fellow_probabilities
from .inference import paths_predictor, predict_proba, resolve_device, resolve_precision
from .metrics import headline_metrics
from .models import takes_both_eyes
from .preprocess import ImageCache, Preprocessing, load_stack
from .tasks import BothEyes


def calibrate_from_split(
    checkpoint, normal_class="normal", cache_dir=None, device="auto", progress: bool = True, data=None
) -> dict | None:
    """Calibrate an existing checkpoint on the validation split stored in it (rewrites the checkpoint):
    temperature, decision rule and screening threshold, then the fellow-eye weight. `data`: the training
    data at another place than the checkpoint records."""
    return calibrate_on_validation(
        checkpoint, _validation_probabilities(checkpoint, cache_dir, device, progress, data), normal_class
    )


def calibrate_on_validation(checkpoint, val: dict, normal_class: str = "normal") -> dict | None:
    """Fit the calibration on validation probabilities of the checkpoint's model and store it in the
    checkpoint (one rewrite): temperature, decision rule, screening threshold, and the fellow-eye weight
    where `val` says which eyes they are ("records", "source", "predict" for their fellows)."""
    model, meta = load_model(checkpoint)
    try:
        calibration = calibrate(val["prob"], val["y"], meta["classes"], normal_class)
    except ValueError as e:  # e.g. a validation split without normals: keep the checkpoint uncalibrated
        print(f"calibration skipped: {e}", file=sys.stderr)
        return None
    print(describe(calibration))
    if "eye_prob" in val:  # a both-eye model's eye head, calibrated on the validation eyes
        try:
            calibration["eye"] = calibrate(val["eye_prob"], val["eye_y"], meta["classes"], normal_class)
            print("per eye: " + describe(calibration["eye"]))
        except ValueError as e:
            print(f"per-eye calibration skipped: {e}", file=sys.stderr)
    if "records" in val:
        fit = _fit_fellow_weight(val, meta["classes"])
        if fit is not None:
            calibration["fellow_eye"] = fit
    meta["calibration"] = calibration
    # A trained model stores its selected epoch's; a model made otherwise (an ensemble) gets them here.
    meta.setdefault("val_metrics", headline_metrics(val["y"], val["prob"]))
    save_model(checkpoint, model, meta)
    return calibration


def validation_eyes(records, prob, y, dataset: Dataset, predict) -> dict:
    """What `calibrate_on_validation` needs for the fellow eye, from probabilities already computed."""
    return {
        "prob": prob,
        "y": y,
        "records": list(records),
        "source": dataset.source,
        "predict": predict,
    }


def both_eyes_validation(task: BothEyes, model, samples, norm, device, precision) -> dict:
    """What `calibrate_on_validation` needs of a both-eye model: its patients, and its eyes apart."""
    scored = task.both_levels(model, samples, norm["mean"], norm["std"], device, precision)
    return {k: scored[k] for k in ("prob", "y", "eye_prob", "eye_y")}


def _validation_probabilities(checkpoint, cache_dir, device, progress: bool = True, data=None) -> dict:
    dev = resolve_device(str(device))
    model, meta = load_model(checkpoint, dev)
    dataset = load_dataset(checkpoint_data(meta, data), meta["classes"])
    part = subset(dataset, meta["split"], "val")
    cache = ImageCache(Preprocessing(**meta["preprocessing"]), cache_dir)
    precision = resolve_precision(meta.get("config", {}).get("precision", "auto"), dev)  # as in training
    norm = meta["normalization"]
    if takes_both_eyes(meta["model"]):  # patients, as the end of training calibrates them
        task = BothEyes.of_checkpoint(meta)
        samples = task.load(part, cache, "val", progress, report=True)
        return both_eyes_validation(task, model, samples, norm, dev, precision)
    images, ok, _ = load_stack([r.path for r in part.records], cache, progress=progress)
    prob = predict_proba(model, images, norm["mean"], norm["std"], dev, precision)
    predict = paths_predictor(model, cache, norm, dev, precision)
    return validation_eyes([part.records[i] for i in ok], prob, part.labels()[ok], dataset, predict)


def _fit_fellow_weight(val: dict, classes: list[str]) -> dict | None:
    """Choose the fellow-eye weight on the validation eyes (fellow.py); None when no eye has a fellow."""
    fellow_prob, has = fellow_probabilities(val["predict"], val["records"], val["prob"], val["source"])
    if not has.any():
        return None
    fit = choose_weight(val["prob"], fellow_prob, has, val["y"], classes)
    print(f"fellow eye: weight {fit['weight']:.2f} (val macro-AUC {fit['val_macro_auc_alone']:.3f} alone -> "
          f"{fit['val_macro_auc']:.3f}; {fit['eyes_with_fellow']} of {fit['eyes']} eyes have one)")  # fmt: skip
    return fit
