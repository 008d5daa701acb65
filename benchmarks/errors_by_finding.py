"""Which eyes of a class does a model miss? One-vs-rest ROC-AUC of the class, split by the eyes' findings.

    python benchmarks/errors_by_finding.py --data MANIFEST [--subset val] [--column keywords] RUN [RUN ...]

For every class and every finding (a `;`-separated entry of the manifest's `--column`) carried by at least
`--min-eyes` eyes of that class in the subset, the AUC of P(class) for those eyes against all eyes of the
other classes; and for the healthy class, the AUC of the disease score 1 − P(normal) for each finding's
diseased eyes against the normal eyes. Reads RUN/eval-SUBSET/predictions.csv (written by `eyescreen
evaluate`), so nothing is re-computed and the numbers are those of the reports.
"""

from __future__ import annotations

import argparse
import csv
from collections import defaultdict
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score


def findings_by_image(manifest: Path, column: str) -> dict[str, list[str]]:
    with manifest.open(newline="") as f:
        rows = list(csv.DictReader(f))
    if rows and column not in rows[0]:
        raise SystemExit(f"{manifest}: no column {column!r}")
    return {r["image"]: sorted({k.strip() for k in r[column].split(";") if k.strip()}) for r in rows}


def read_predictions(run: Path, subset: str) -> list[dict]:
    path = run / f"eval-{subset}" / "predictions.csv"
    if not path.is_file():
        raise SystemExit(f"{path}: missing; run `eyescreen evaluate --subset {subset}` for {run} first")
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def groups(
    rows: list[dict], findings: dict[str, list[str]], min_eyes: int
) -> dict[tuple[str, str], set[str]]:
    """(class, finding) -> images of that class carrying that finding, for groups of at least min_eyes."""
    found = defaultdict(set)
    for r in rows:
        for k in findings.get(r["image"], []):
            found[r["true"], k].add(r["image"])
    return {key: images for key, images in found.items() if len(images) >= min_eyes}


def auc_of(rows: list[dict], positives: set[str], negatives, score) -> float:
    chosen = [r for r in rows if r["image"] in positives or negatives(r)]
    y = np.array([r["image"] in positives for r in chosen])
    return float(roc_auc_score(y, [score(r) for r in chosen]))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", type=Path)
    p.add_argument("--data", type=Path, required=True, help="the manifest with the findings column")
    p.add_argument("--subset", default="val")
    p.add_argument("--column", default="keywords")
    p.add_argument("--normal-class", default="normal")
    p.add_argument("--min-eyes", type=int, default=5)
    args = p.parse_args()

    findings = findings_by_image(args.data, args.column)
    predictions = {run: read_predictions(run, args.subset) for run in args.runs}
    first = predictions[args.runs[0]]
    table = groups(first, findings, args.min_eyes)
    normal = args.normal_class
    names = " | ".join(run.name for run in args.runs)
    print(f"| class | finding | eyes | AUC of P(class), vs other classes: {names} | mean "
          f"| AUC of 1 − P({normal}), vs {normal} eyes: {names} | mean |")  # fmt: skip
    print("|---|---|---|" + "---|" * (2 * len(args.runs) + 2))
    for (cls, finding), images in sorted(table.items(), key=lambda kv: (kv[0][0], -len(kv[1]))):
        own, disease = [], []
        for run in args.runs:
            rows = predictions[run]
            own.append(
                auc_of(rows, images, lambda r, c=cls: r["true"] != c, lambda r, c=cls: float(r[f"prob_{c}"]))
            )
            if cls != normal:
                disease.append(auc_of(rows, images, lambda r: r["true"] == normal,
                                      lambda r: 1 - float(r[f"prob_{normal}"])))  # fmt: skip

        def cells(values):
            return " | ".join(f"{v:.3f}" for v in values) + f" | **{np.mean(values):.3f}**" if values else (
                " | ".join("–" for _ in args.runs) + " | –")  # fmt: skip

        print(f"| {cls} | {finding} | {len(images)} | {cells(own)} | {cells(disease)} |")


if __name__ == "__main__":
    main()
