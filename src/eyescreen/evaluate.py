"""Evaluate a checkpoint on a split of a dataset: metrics with patient-bootstrap intervals and a report."""

from __future__ import annotations

import csv
import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .calibrate import apply_temperature, class_weights, decide, eye_calibration, operating_point
from .checkpoint import load_model
from .data import (
    DataError,
    Dataset,
    checkpoint_data,
    read_columns,
    read_dataset,
    read_split,
    subset,
)
from .fellow import blend, fellow_probabilities, stored_weight
from .held_out_links import patient_units, person_units, seen_elsewhere
from .inference import (
    TTA_DESCRIPTIONS,
    ViewAverage,
    paths_predictor,
    predict_proba,
    resolve_device,
    resolve_precision,
)
from .initial_weights import same_data
from .metrics import bootstrap_ci, classification_metrics, expected_calibration_error, log_loss
from .models import takes_both_eyes
from .preprocess import ImageCache, Preprocessing, load_stack
from .report import write_report
from .subgroups import patient_cells, score_subgroups, subgroup_labels, write_subgroups
from .tasks import BothEyes


def absent_classes_note(absent: list[str]) -> list[str]:
    """A model evaluated on other data may meet only some of its classes: say which are missing."""
    if not absent:
        return []
    return [f"classes of the model absent from these data: {', '.join(absent)} (no AUC or sensitivity for "
            "them; macro-AUC and balanced accuracy are over the classes present)"]  # fmt: skip


def left_out_note(unknown: dict[str, int]) -> str:
    """Images of other data whose classes the model does not have: said, so none go missing unnoticed."""
    counts = ", ".join(f"{c} {n}" for c, n in sorted(unknown.items()))
    return f"left out: {sum(unknown.values())} images of classes the model does not have ({counts})"


def evaluate(
    checkpoint: str | Path,
    out_dir: str | Path | None = None,
    data: str | Path | None = None,
    split_file: str | Path | None = None,
    split_name: str = "test",
    cache_dir: str | Path | None = None,
    n_resamples: int = 1000,
    device: str = "auto",
    precision: str = "auto",
    progress: bool = True,
    tta: str | None = None,
    by: str | None = None,
) -> dict:
    """`tta`: None, or a key of `inference.TTA_VIEWS` ("flips", "dihedral"). `by`: a manifest column
    (sex, age, camera, site, ...) to score the eyes of each of its subgroups apart (subgroups.py)."""
    checkpoint = Path(checkpoint)
    dev = resolve_device(device)
    model, meta = load_model(checkpoint, dev)
    if tta:
        model = ViewAverage(model, tta)
    classes = meta["classes"]
    # other data (--data) may lack some of the model's classes, and hold classes the model does not know
    raw, dataset = read_dataset(checkpoint_data(meta, data), classes, allow_absent=True)
    split = None
    if split_name == "all":
        part = dataset
    else:
        if split_file:
            split = read_split(split_file, dataset)
        else:
            split = meta["split"]
            unknown = [r.key for r in dataset.records if r.key not in split]
            if unknown:
                raise DataError(
                    f"{dataset.source}: {len(unknown)} image(s) are not in the checkpoint's split (e.g. {unknown[0]}); "
                    "pass --split FILE or --subset all"
                )
        part = subset(dataset, split, split_name)
    if not part.records:
        raise DataError(f"{dataset.source}: the {split_name} split is empty")
    subgroup_cells = _subgroup_cells(dataset, by) if by else None

    cache = ImageCache(Preprocessing(**meta["preprocessing"]), cache_dir)
    norm, prec = meta["normalization"], resolve_precision(precision, dev)
    out = Path(out_dir) if out_dir else checkpoint.parent / f"eval-{split_name}"
    metrics_csv = checkpoint.parent / "metrics.csv"
    common = {
        "checkpoint": str(checkpoint),
        "model": meta["model"]["name"],
        "epoch": meta.get("epoch"),
        **({"members": [m["model"] for m in meta["ensemble"]]} if "ensemble" in meta else {}),
        "data": str(dataset.source),
        "split": split_name,
        "test_time_augmentation": TTA_DESCRIPTIONS[tta] if tta else "none",
        "classes": classes,
    }
    if data:  # other data: its images of this subset whose class the model does not have, counted
        foreign = Counter(r.label for r in raw if r.label is not None and r.label not in classes
                          and (split is None or split.get(r.key) == split_name))  # fmt: skip
        if foreign:
            common["left_out_classes"] = dict(foreign)
    job = _Job(model, meta, dataset, part, split, split_name, data, cache, norm, dev, prec, out, metrics_csv,
               common, n_resamples, by, subgroup_cells, progress)  # fmt: skip
    return _both_eye_reports(job) if takes_both_eyes(meta["model"]) else _eye_reports(job)


@dataclass
class _Job:
    """One evaluation: the model, the photographs of the split, and where and how the reports go."""

    model: object
    meta: dict
    dataset: Dataset
    part: Dataset  # the records of the split scored
    split: dict | None  # None: every record (--subset all)
    split_name: str
    data: object  # --data, or None: the checkpoint's own
    cache: ImageCache
    norm: dict
    device: object
    precision: str
    out: Path
    metrics_csv: Path
    common: dict  # what every report of this evaluation says first
    n_resamples: int
    by: str | None
    cells: dict | None  # the `by` column's cell per image key
    progress: bool = True


def _both_eye_reports(job: _Job) -> dict:
    """A both-eye model: its report per patient, with its eyes' report beside it (eyes/)."""
    meta, classes, out = job.meta, job.meta["classes"], job.out
    task = BothEyes.of_checkpoint(meta)
    samples = task.load(job.part, job.cache, job.split_name, job.progress, report=True)
    scored = task.both_levels(
        job.model, samples, job.norm["mean"], job.norm["std"], job.device, job.precision
    )
    prob, y, eye_prob, eye_y, eye_names = (scored[k] for k in ("prob", "y", "eye_prob", "eye_y", "eye_names"))
    has_label = (samples.targets[:, 2] >= 0).numpy()
    names = [n for n, k in zip(samples.names, has_label, strict=True) if k]
    patient_of = {r.key: r.group for r in job.part.records}  # as a single-eye model's eyes name their patient
    eye_patient = np.array([patient_of[name] for name in eye_names])
    eye_meta = meta | {"calibration": eye_calibration(meta.get("calibration"))}
    units, linked, link_notes = _held_out_links(meta, job.data, job.split, job.split_name, list(eye_names),
                                                eye_patient, eye_y, eye_prob, classes)  # fmt: skip
    eye_report = _score(job.common | {"level": "eye", **linked, "notes": link_notes}, eye_y, eye_prob, eye_patient,
                        list(eye_names), eye_meta, out / "eyes", None, job.n_resamples, samples.skipped, units)  # fmt: skip
    main = job.common | {"level": "patient", **linked, "notes": [f"per eye: {n}" for n in link_notes]}
    # linked patients resampled as one person here too
    people = patient_units([f"patient:{n}" for n in names], eye_patient, units)
    if job.by:
        cells = patient_cells(job.part.records, job.cells)
        section = _subgroups(job.by, [cells.get(f"patient:{n}", "") for n in names], y, prob,
                             np.array(names) if people is None else people, meta, out, job.n_resamples, "patients")  # fmt: skip
        main |= {"subgroups": section["subgroups"], "notes": main["notes"] + section["notes"]}
    report = _score(main, y, prob, np.array(names), names, meta, out, job.metrics_csv, job.n_resamples,
                    samples.skipped, people)  # fmt: skip
    report["eye_level"] = {k: eye_report[k] for k in ("metrics", "confidence_intervals", "files")}
    (out / "report.json").write_text(json.dumps(report, indent=2))
    return report


def _eye_reports(job: _Job) -> dict:
    """A single-eye model: its report per eye, and beside it, where they apply, the eyes blended with their
    fellow eye (fellow-eye/) and its decisions per patient (patients/)."""
    meta, out, common, n_resamples, part = job.meta, job.out, job.common, job.n_resamples, job.part
    classes = meta["classes"]
    images, ok, errors = load_stack([r.path for r in part.records], job.cache, progress=job.progress,
                                    desc=job.split_name)  # fmt: skip
    records = [part.records[i] for i in ok]
    prob = predict_proba(job.model, images, job.norm["mean"], job.norm["std"], job.device, job.precision)
    groups = np.array([r.group for r in records])
    y = part.labels()[ok]
    fellow_weight = stored_weight(meta.get("calibration"))
    has = np.zeros(len(records), dtype=bool)
    if fellow_weight > 0:  # the same eyes, each with its fellow eye's photograph as evidence
        predict = paths_predictor(job.model, job.cache, job.norm, job.device, job.precision)
        fellow_prob, has = fellow_probabilities(predict, records, prob, job.dataset.source)
    notes = (
        ["each eye blended with its fellow eye: [fellow-eye/report.md](fellow-eye/report.md)"]
        if has.any()
        else []
    )
    keys = [r.key for r in records]
    units, linked, link_notes = _held_out_links(meta, job.data, job.split, job.split_name, keys, groups, y, prob,
                                                classes)  # fmt: skip
    notes = notes + link_notes
    main = common | {"level": "eye", **linked, "notes": notes}
    if job.by:
        section = _subgroups(job.by, [job.cells.get(r.key, "") for r in records], y, prob,
                             groups if units is None else units, meta, out, n_resamples, "eyes")  # fmt: skip
        main |= {"subgroups": section["subgroups"], "notes": notes + section["notes"]}
    report = _score(main, y, prob, groups, keys, meta, out, job.metrics_csv, n_resamples, [m for _, m in errors],
                    units)  # fmt: skip
    if has.any():
        note = (f"each eye blended with its fellow eye (weight {fellow_weight:.2f}, fitted on validation); "
                f"{int(has.sum())} of {len(records)} eyes have one; each eye alone: [../report.md](../report.md)")  # fmt: skip
        sub = _score(common | {"level": "eye", "notes": [note]}, y, blend(prob, fellow_prob, has, fellow_weight), groups,
                     keys, meta, out / "fellow-eye", None, n_resamples, [], units)  # fmt: skip
        report["with_fellow_eye"] = {
            k: sub[k] for k in ("metrics", "confidence_intervals", "calibration", "decision", "files")
        }
        report["with_fellow_eye"] |= {"weight": fellow_weight, "eyes_with_fellow": int(has.sum())}
        (out / "report.json").write_text(json.dumps(report, indent=2))
    patients = aggregate_patients(records, prob, classes, meta.get("config", {}))
    if patients is not None:  # the same model judged per patient, for comparison with both-eye models
        names, p_prob, p_y = patients
        note = "a single-eye model; each patient takes its eye with the higher disease score; per eye: [../report.md](../report.md)"
        people = patient_units([f"patient:{n}" for n in names], groups, units)
        sub = _score(common | {"level": "patient", "patient_note": note}, p_y, p_prob, np.array(names), names, meta, out / "patients",
                     None, n_resamples, [], people)  # fmt: skip
        report["patient_level"] = {k: sub[k] for k in ("metrics", "confidence_intervals", "files")}
        (out / "report.json").write_text(json.dumps(report, indent=2))
    return report


def _held_out_links(meta, data, split, split_name, keys, groups, y, prob, classes) -> tuple:
    """For the eyes `keys` (patients `groups`) of the split `split_name`, from the links the checkpoint
    recorded: the bootstrap units (linked patients as one; None: the patient ids), the report's
    `linked_elsewhere` section ({} if no eye has a twin in another split) and the notes to add."""
    ours = data is None or same_data(meta, data)  # the recorded links name this data's images
    links = meta.get("linked_photographs") if ours else None
    if links is None:
        if ours and split is not None:
            return None, {}, ["the checkpoint does not say which photographs are one eye under two patient ids "
                              "(trained before eyescreen kept them): `eyescreen check-data --split` on its split "
                              "lists any in two splits"]  # fmt: skip
        return None, {}, []
    if not links:  # recorded, and none found
        return None, {}, []
    units = person_units(keys, list(groups), links)
    elsewhere = seen_elsewhere(keys, split, links, split_name) if split is not None else {}
    if not elsewhere:
        return units, {}, []
    note, section = _linked_section(elsewhere, keys, y, prob, classes)
    return units, {"linked_elsewhere": section}, [note]


def _linked_section(elsewhere: dict[str, list[str]], keys: list[str], y, prob, classes) -> tuple[str, dict]:
    """A note on the eyes of this split whose photograph or eye is in another split under another patient
    id, and the report's section: those eyes, and the headline metrics without them."""
    keep = np.array([k not in elsewhere for k in keys])
    without = classification_metrics(y[keep], prob[keep], classes)
    shown = "; ".join(f"{k} = {', '.join(v)}" for k, v in list(elsewhere.items())[:3])
    more = f"; and {len(elsewhere) - 3} more" if len(elsewhere) > 3 else ""
    note = (f"{len(elsewhere)} eye(s) of this split are photographs of an eye in another split under another "
            f"patient id ({shown}{more}): not new to the model, which trained on or was chosen by their twins; "
            f"without them, macro-AUC {without['macro_auc']:.4f} and balanced accuracy "
            f"{without['balanced_accuracy']:.4f} over {int(keep.sum())} eyes")  # fmt: skip
    return note, {"eyes": elsewhere, "without_them": {"n": int(keep.sum()), "macro_auc": without["macro_auc"],
                                                      "balanced_accuracy": without["balanced_accuracy"]}}  # fmt: skip


def _subgroups(by, cells, y, prob, groups, meta, out: Path, n_resamples, unit: str) -> dict:
    """The report's subgroup section and its note: each subgroup of the `by` column's `cells` (one per
    scored eye or patient) scored apart."""
    classes = meta["classes"]
    labels, order = subgroup_labels(cells, by)
    rows = score_subgroups(
        labels, order, y, prob, groups, classes, meta.get("calibration"), n_resamples, unit
    )
    files = write_subgroups(rows, by, out, classes, unit)
    note = f"per subgroup of `{by}` ({unit}): section below; also [{files['csv'].name}]({files['csv'].name})"
    subgroups = {"column": by, "unit": unit, "rows": rows, "files": {k: str(v) for k, v in files.items()}}
    return {"subgroups": subgroups, "notes": [note]}


def _subgroup_cells(dataset: Dataset, column: str) -> dict[str, str]:
    """The `--by` column's cell per image key, checked before any image is read."""
    if not dataset.source.is_file():
        raise DataError(f"{dataset.source}: --by needs a manifest CSV with a {column!r} column, not a folder")
    return read_columns(dataset.source, [column], "for --by")[column]


def aggregate_patients(records, prob: np.ndarray, classes: list[str], config: dict):
    """Patient decisions from a single-eye model: each patient takes the probabilities of the eye with
    the higher disease score 1 - P(normal); the patient label follows the both-eye rule (pairs.py).
    None when there is no normal class or no patient has two eyes."""
    from .pairs import patient_label

    normal_class = config.get("normal_class", "normal")
    if normal_class not in classes:
        return None
    normal = classes.index(normal_class)
    by_patient: dict[str, list[int]] = {}
    for i, r in enumerate(records):
        if r.group.startswith("patient:"):
            by_patient.setdefault(r.group, []).append(i)
    if not any(len(v) > 1 for v in by_patient.values()):
        return None
    names, probs, labels = [], [], []
    for group, idx in by_patient.items():
        label = patient_label(
            [records[i].label for i in idx], classes, normal_class, config.get("two_diseases", "exclude")
        )
        if label is None:
            continue
        driver = max(idx, key=lambda i: 1 - prob[i, normal])
        names.append(group.split(":", 1)[1])
        probs.append(prob[driver])
        labels.append(classes.index(label))
    return names, np.array(probs), np.array(labels)


def _score(
    common, y, prob, groups, names, meta, out: Path, metrics_csv, n_resamples, skipped, units=None
) -> dict:
    """Metrics, patient-bootstrap intervals, calibration section and report files for one unit (eye or patient).
    `units`: what the bootstrap resamples, where not the patient ids `groups` (linked patients as one)."""
    classes = common["classes"]
    units = groups if units is None else units
    metrics = classification_metrics(y, prob, classes)
    absent = [c for c, v in metrics["per_class"].items() if v["support"] == 0]  # at this unit's level
    report = common | {
        "n_patients": int(len(set(groups))),
        "metrics": metrics,
        "confidence_intervals": bootstrap_ci(y, prob, units, n_resamples=n_resamples),
        "skipped": list(skipped),
        "absent_classes": absent,
        "notes": absent_classes_note(absent)
        + ([left_out_note(common["left_out_classes"])] if "left_out_classes" in common else [])
        + common.get("notes", []),
    }
    calibration = meta.get("calibration")
    if calibration:
        calibrated = apply_temperature(prob, calibration["temperature"])
        section = {
            "temperature": calibration["temperature"],
            "ece_before": report["metrics"]["ece"],
            "ece_after": expected_calibration_error(y, calibrated),
            # what the temperature minimises on validation; ECE, binned over few eyes, can move either way
            "log_loss_before": log_loss(y, prob),
            "log_loss_after": log_loss(y, calibrated),
        }
        if "referable" in calibration and calibration["referable"]["normal_class"] in classes:
            ref = calibration["referable"]
            normal = classes.index(ref["normal_class"])
            section["referable"] = {"threshold": ref["threshold"], "normal_class": ref["normal_class"]}
            section["referable"] |= operating_point(calibrated, y, normal, ref["threshold"])
        report["calibration"] = section
        weights = class_weights(calibration)
        if weights is not None:  # the rule predict and serve use: its class decisions, with intervals
            # Fitted on temperature-scaled probabilities, so applied to them, as predict does.
            decided = classification_metrics(y, calibrated, classes, weights)
            report["decision"] = calibration["decision"] | {
                "metrics": {k: decided[k] for k in ("accuracy", "balanced_accuracy", "macro_f1",
                                                    "confusion_matrix", "per_class")},
                "confidence_intervals": bootstrap_ci(y, calibrated, units, n_resamples=n_resamples,
                                                     weights=weights),
            }  # fmt: skip
    if names is not None:
        first = "image" if common["level"] == "eye" else "patient_id"
        predicted = (
            decide(apply_temperature(prob, calibration["temperature"]), class_weights(calibration))
            if calibration
            else prob.argmax(axis=1)
        )
        _write_predictions(out / "predictions.csv", first, names, groups, classes, y, prob, predicted)
    files = write_report(out, report, y, prob, metrics_csv if metrics_csv and metrics_csv.is_file() else None)
    report["files"] = {k: str(v) for k, v in files.items()}
    return report


def _write_predictions(path: Path, first: str, names, groups, classes, y, prob, predicted) -> None:
    """One row per unit; "predicted" follows the checkpoint's decision rule, as `predict` does."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow([first, "patient", "true", "predicted"] + [f"prob_{c}" for c in classes])
        for name, group, t, p, k in zip(names, groups, y, prob, predicted, strict=True):
            w.writerow([name, group, classes[t], classes[int(k)]] + [f"{v:.6f}" for v in p])
