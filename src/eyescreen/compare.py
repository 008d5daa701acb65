"""`eyescreen compare`: is model B better than model A on the same patients? Two evaluations' predictions,
the difference of each headline metric and its 95% interval from one patient bootstrap drawn for both
(paired: each resample scores A and B on the same patients), which is far tighter than comparing two
separate intervals."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from .data import DataError
from .metrics import label_metrics, patient_resamples, rank_macro_auc

METRICS = ("accuracy", "balanced_accuracy", "macro_auc")


def read_predictions(path: str | Path) -> dict:
    """An evaluation's predictions.csv (or the folder holding it): unit keys, patients, labels, the
    class named (`predicted`, the checkpoint's decision rule) and the probabilities."""
    path = Path(path)
    csv_path = path / "predictions.csv" if path.is_dir() else path
    if not csv_path.is_file():
        raise DataError(f"{csv_path}: no predictions.csv; run `eyescreen evaluate` first (it writes one)")
    with open(csv_path, newline="") as f:
        reader = csv.DictReader(f)
        columns = reader.fieldnames or []
        rows = list(reader)
    classes = [c[len("prob_") :] for c in columns if c.startswith("prob_")]
    if not rows or not classes or not {"patient", "true", "predicted"} <= set(columns):
        raise DataError(f"{csv_path}: not the predictions.csv of `eyescreen evaluate`")
    index = {c: i for i, c in enumerate(classes)}
    return {
        "path": str(csv_path),
        "unit": columns[0],
        "classes": classes,
        "keys": [r[columns[0]] for r in rows],
        "patients": np.array([r["patient"] for r in rows]),
        "y": np.array([index[r["true"]] for r in rows]),
        "named": np.array([index[r["predicted"]] for r in rows]),
        "prob": np.array([[float(r[f"prob_{c}"]) for c in classes] for r in rows]),
    }


def aligned(a: dict, b: dict) -> tuple[dict, dict, int]:
    """A and B on the units both scored, in one order; how many units only one of them has."""
    if a["classes"] != b["classes"]:
        raise DataError(f"{b['path']}: classes {b['classes']} differ from {a['path']}'s {a['classes']}")
    if a["unit"] != b["unit"]:
        raise DataError(f"{b['path']}: scores {b['unit']}s, {a['path']} {a['unit']}s; compare like with like")
    where_b = {k: i for i, k in enumerate(b["keys"])}
    both = [(i, where_b[k]) for i, k in enumerate(a["keys"]) if k in where_b]
    if not both:
        raise DataError(f"{a['path']} and {b['path']}: no {a['unit']} in common")
    ia, ib = (np.array(x) for x in zip(*both, strict=True))
    if (a["y"][ia] != b["y"][ib]).any():
        raise DataError(f"{a['path']} and {b['path']}: the same {a['unit']}s carry different labels")
    only_one = len(a["keys"]) + len(b["keys"]) - 2 * len(both)
    columns = ("patients", "y", "named", "prob")
    return {k: a[k][ia] for k in columns}, {k: b[k][ib] for k in columns}, only_one


def _named_metrics(y: np.ndarray, named: np.ndarray, prob: np.ndarray) -> dict:
    """Accuracy and balanced accuracy of the classes the checkpoints named; macro-AUC of the ranking."""
    return label_metrics(y, named) | {"macro_auc": rank_macro_auc(y, prob)}


def compare(a_path: str | Path, b_path: str | Path, n_resamples: int = 2000, seed: int = 0) -> dict:
    a_all, b_all = read_predictions(a_path), read_predictions(b_path)
    a, b, only_one = aligned(a_all, b_all)
    y, patients = a["y"], a["patients"]
    point_a, point_b = (_named_metrics(y, d["named"], d["prob"]) for d in (a, b))
    diffs: dict[str, list[float]] = {k: [] for k in METRICS}
    for idx in patient_resamples(patients, n_resamples, np.random.default_rng(seed)):
        ma = _named_metrics(y[idx], a["named"][idx], a["prob"][idx])
        mb = _named_metrics(y[idx], b["named"][idx], b["prob"][idx])
        for k in METRICS:
            diffs[k].append(mb[k] - ma[k])
    rows = {}
    for k in METRICS:
        d = np.asarray(diffs[k], dtype=float)
        d = d[~np.isnan(d)]
        rows[k] = {
            "a": point_a[k],
            "b": point_b[k],
            "difference": point_b[k] - point_a[k],
            "ci": [float(np.quantile(d, 0.025)), float(np.quantile(d, 0.975))] if len(d) else [None, None],
            "b_better_share": float(np.mean(d > 0)) if len(d) else None,
        }
    return {
        "a": a_all["path"],
        "b": b_all["path"],
        "unit": a_all["unit"],
        "units": int(len(y)),
        "patients": int(len(set(patients))),
        "only_in_one": only_one,
        "n_resamples": n_resamples,
        "metrics": rows,
    }


def comparison_lines(result: dict) -> list[str]:
    names = {"accuracy": "accuracy", "balanced_accuracy": "balanced accuracy", "macro_auc": "macro-AUC"}
    lines = [
        f"A: {result['a']}",
        f"B: {result['b']}",
        f"{result['units']} {result['unit']}s of {result['patients']} patients scored by both"
        + (f" ({result['only_in_one']} scored by one only, left out)" if result["only_in_one"] else ""),
        "accuracy and balanced accuracy of the class each checkpoint names (its decision rule); macro-AUC of "
        "its probabilities",
        "",
        f"{'':<18} {'A':>7} {'B':>7}   B - A [95% CI, paired patient bootstrap]   B higher in",
    ]
    for k, r in result["metrics"].items():
        lo, hi = r["ci"]
        interval = f"[{lo:+.3f}, {hi:+.3f}]" if lo is not None else "[–]"
        share = f"{r['b_better_share']:.0%} of resamples" if r["b_better_share"] is not None else ""
        lines.append(
            f"{names[k]:<18} {r['a']:>7.3f} {r['b']:>7.3f}   {r['difference']:+.3f} {interval:<30} {share}"
        )
    undecided = [
        names[k] for k, r in result["metrics"].items() if r["ci"][0] is None or r["ci"][0] <= 0 <= r["ci"][1]
    ]
    if undecided:
        lines.append(
            f"{', '.join(undecided)}: the interval holds 0; these patients cannot tell A and B apart there"
        )
    else:
        lines.append("no interval holds 0: on these patients B differs from A in every metric above")
    lines.append("choose between models on validation; a test split used to choose is no longer a test")
    return lines


def write_comparison(result: dict, path: str | Path) -> None:
    Path(path).write_text(json.dumps(result, indent=2) + "\n")
