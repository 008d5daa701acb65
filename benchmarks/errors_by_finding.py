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
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score

sys.path.insert(0, str(Path(__file__).parent))
from ensemble import load as load_predictions  # noqa: E402  (the predictions.csv reader the ensemble uses)


def findings_by_image(manifest: Path, column: str) -> dict[str, list[str]]:
    with manifest.open(newline="") as f:
        rows = list(csv.DictReader(f))
    if rows and column not in rows[0]:
        raise SystemExit(f"{manifest}: no column {column!r}")
    return {r["image"]: sorted({k.strip() for k in r[column].split(";") if k.strip()}) for r in rows}


def read_predictions(run: Path, subset: str):
    if not (run / f"eval-{subset}" / "predictions.csv").is_file():
        raise SystemExit(
            f"{run}/eval-{subset}/predictions.csv: missing; run `eyescreen evaluate --subset {subset}` first"
        )
    classes, keys, prob, y, _ = load_predictions(run, subset)
    return classes, np.array(keys), prob, y


def groups(
    keys, y, classes, findings: dict[str, list[str]], min_eyes: int
) -> dict[tuple[str, str], set[str]]:
    """(class, finding) -> images of that class carrying that finding, for groups of at least min_eyes."""
    found = defaultdict(set)
    for key, label in zip(keys, y, strict=True):
        for k in findings.get(key, []):
            found[classes[label], k].add(key)
    return {key: images for key, images in found.items() if len(images) >= min_eyes}


def auc_of(keys, positives: set[str], negatives: np.ndarray, score: np.ndarray) -> float:
    """AUC of `score` for the images in `positives` against the rows where `negatives` is true."""
    positive = np.isin(keys, list(positives))
    chosen = positive | negatives
    return float(roc_auc_score(positive[chosen], score[chosen]))


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
    classes, keys, _, y = predictions[args.runs[0]]
    table = groups(keys, y, classes, findings, args.min_eyes)
    normal = classes.index(args.normal_class)
    names = " | ".join(run.name for run in args.runs)
    print(f"| class | finding | eyes | AUC of P(class), vs other classes: {names} | mean "
          f"| AUC of 1 − P({args.normal_class}), vs {args.normal_class} eyes: {names} | mean |")  # fmt: skip
    print("|---|---|---|" + "---|" * (2 * len(args.runs) + 2))
    for (cls, finding), images in sorted(table.items(), key=lambda kv: (kv[0][0], -len(kv[1]))):
        c = classes.index(cls)
        own, disease = [], []
        for run in args.runs:
            _, keys, prob, y = predictions[run]
            own.append(auc_of(keys, images, y != c, prob[:, c]))
            if c != normal:
                disease.append(auc_of(keys, images, y == normal, 1 - prob[:, normal]))

        def cells(values):
            return " | ".join(f"{v:.3f}" for v in values) + f" | **{np.mean(values):.3f}**" if values else (
                " | ".join("–" for _ in args.runs) + " | –")  # fmt: skip

        print(f"| {cls} | {finding} | {len(images)} | {cells(own)} | {cells(disease)} |")


if __name__ == "__main__":
    main()
