"""Metrics per subgroup of the evaluated eyes (`evaluate --by COLUMN`): does the model work as well for
women as for men, in every age band, on every camera or at every site? Each subgroup is scored as the
whole is — macro-AUC, the balanced accuracy of the class `predict` names, the referable flag's
sensitivity and specificity — with patient-bootstrap intervals: a small subgroup gets a wide interval,
not a verdict."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from .calibrate import apply_temperature, class_weights, operating_point
from .data import NOT_GIVEN, is_numeric, parse_number
from .metrics import bootstrap_ci, headline_metrics

QUARTILES = (0.25, 0.5, 0.75)  # a numeric column is cut at its quartiles among the evaluated eyes
UNKNOWN = "unknown"


def subgroup_labels(cells: list[str], column: str) -> tuple[list[str], list[str]]:
    """A subgroup name per eye, and the subgroups in the order to show them. The name is the cell itself
    (subgroups in alphabetical order), or for a numeric column its quartile band among these eyes
    ("age ≤ 52", "52 < age ≤ 58", …, low to high); an empty cell is "unknown", shown last."""
    if not is_numeric(cells):
        labels = [cell if cell.lower() not in NOT_GIVEN else UNKNOWN for cell in cells]
        return labels, sorted(set(labels) - {UNKNOWN}) + [UNKNOWN] * (UNKNOWN in labels)
    values = [parse_number(cell) if cell.lower() not in NOT_GIVEN else None for cell in cells]
    given = [v for v in values if v is not None]
    edges = sorted({float(f"{e:.3g}") for e in np.quantile(given, QUARTILES)})
    names = [f"{column} ≤ {edges[0]:g}"]
    names += [f"{lo:g} < {column} ≤ {hi:g}" for lo, hi in zip(edges, edges[1:], strict=False)]
    names += [f"{column} > {edges[-1]:g}"]
    labels = [UNKNOWN if v is None else names[int(np.searchsorted(edges, v, side="left"))] for v in values]
    return labels, [n for n in names + [UNKNOWN] if n in labels]


def patient_cells(records, cells: dict[str, str]) -> dict[str, str]:
    """A both-eye model's subgroup cell per patient (record group), from its eyes' cells: the cell they
    share (an empty one defers to the other); numbers that differ, their mean; words that differ, both
    ("canon + topcon"), a subgroup of its own."""
    by_patient: dict[str, set[str]] = {}
    for r in records:
        cell = cells.get(r.key, "").strip()
        by_patient.setdefault(r.group, set())
        if cell.lower() not in NOT_GIVEN:
            by_patient[r.group].add(cell)
    out = {}
    for patient, given in by_patient.items():
        if len(given) > 1 and is_numeric(list(given)):
            out[patient] = f"{np.mean([parse_number(c) for c in given]):g}"
        else:
            out[patient] = " + ".join(sorted(given))
    return out


def score_subgroups(
    labels: list[str],
    order: list[str],
    y: np.ndarray,
    prob: np.ndarray,
    groups: np.ndarray,
    classes: list[str],
    calibration: dict | None,
    n_resamples: int = 1000,
    unit: str = "eyes",
) -> list[dict]:
    """One row for all of them (eyes, or a both-eye model's patients), then one per subgroup in `order`."""
    labels_array = np.asarray(labels)
    weights = class_weights(calibration)
    calibrated = apply_temperature(prob, calibration["temperature"]) if calibration else prob
    referable = (calibration or {}).get("referable")
    normal = (
        classes.index(referable["normal_class"])
        if referable and referable["normal_class"] in classes
        else None
    )
    rows = []
    for name in [f"all {unit}", *order]:
        keep = np.ones(len(y), dtype=bool) if name == f"all {unit}" else labels_array == name
        yk, pk, ck, gk = y[keep], prob[keep], calibrated[keep], groups[keep]
        ranked = headline_metrics(yk, pk)
        decided = headline_metrics(yk, ck, weights)  # the class predict names: the rule, on calibrated
        row = {
            "subgroup": name,
            **({"eyes": int(keep.sum())} if unit == "eyes" else {}),  # a both-eye model scores patients
            "patients": len(set(gk)),
            "per_class": {c: int((yk == i).sum()) for i, c in enumerate(classes)},
            "macro_auc": ranked["macro_auc"],
            "macro_auc_ci": bootstrap_ci(yk, pk, gk, n_resamples=n_resamples)["macro_auc"],
            "balanced_accuracy": decided["balanced_accuracy"],
            "balanced_accuracy_ci": bootstrap_ci(yk, ck, gk, n_resamples=n_resamples, weights=weights)[
                "balanced_accuracy"
            ],
        }
        if normal is not None:
            row["referable"] = operating_point(ck, yk, normal, referable["threshold"])
        rows.append(row)
    return rows


def write_subgroups(
    rows: list[dict], column: str, out: Path, classes: list[str], unit: str = "eyes"
) -> dict[str, Path]:
    """subgroups-COLUMN.csv (a row per subgroup) and .md (the table a person reads)."""
    counts = ["eyes", "patients"] if unit == "eyes" else ["patients"]
    out.mkdir(parents=True, exist_ok=True)
    stem = "subgroups-" + "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in column)
    csv_path, md_path = out / f"{stem}.csv", out / f"{stem}.md"
    has_referable = any("referable" in row for row in rows)
    with open(csv_path, "w", newline="") as f:
        w = csv.writer(f)
        header = [column, *counts] + [f"n_{c}" for c in classes]
        header += ["macro_auc", "macro_auc_low", "macro_auc_high", "balanced_accuracy", "balanced_accuracy_low",
                   "balanced_accuracy_high"]  # fmt: skip
        header += ["referable_sensitivity", "referable_specificity"] if has_referable else []
        w.writerow(header)
        for row in rows:
            cells = [row["subgroup"], *(row[k] for k in counts)] + [row["per_class"][c] for c in classes]
            cells += [_num(row["macro_auc"]), *map(_num, row["macro_auc_ci"])]
            cells += [_num(row["balanced_accuracy"]), *map(_num, row["balanced_accuracy_ci"])]
            if has_referable:
                ref = row.get("referable", {})
                cells += [_num(ref.get("sensitivity")), _num(ref.get("specificity"))]
            w.writerow(cells)
    md_path.write_text("\n".join(subgroup_table(rows, column, classes, unit)) + "\n")
    return {"csv": csv_path, "md": md_path}


def subgroup_table(rows: list[dict], column: str, classes: list[str], unit: str = "eyes") -> list[str]:
    """A Markdown table of the rows, with 95% intervals; also what the console prints."""
    has_referable = any("referable" in row for row in rows)
    count = "eyes (patients)" if unit == "eyes" else "patients"
    head = [column, count, " / ".join(classes), "macro-AUC [95% CI]", "balanced acc. [95% CI]"]
    head += ["referable sens. / spec."] if has_referable else []
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        cells = [
            row["subgroup"],
            f"{row['eyes']} ({row['patients']})" if unit == "eyes" else str(row["patients"]),
            " / ".join(str(row["per_class"][c]) for c in classes),
            _with_interval(row["macro_auc"], row["macro_auc_ci"]),
            _with_interval(row["balanced_accuracy"], row["balanced_accuracy_ci"]),
        ]
        if has_referable:
            ref = row.get("referable", {})
            cells.append(f"{_num(ref.get('sensitivity'))} / {_num(ref.get('specificity'))}")
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _num(value) -> str:
    return "" if value is None or (isinstance(value, float) and np.isnan(value)) else f"{value:.3f}"


def _with_interval(value: float, interval) -> str:
    lo, hi = interval
    if lo is None or np.isnan(value):
        return _num(value) or "–"
    return f"{value:.3f} [{lo:.3f}, {hi:.3f}]"
