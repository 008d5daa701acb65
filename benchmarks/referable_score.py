"""Which score should flag an eye as referable? Sensitivity per disease at a fixed specificity.

    python benchmarks/referable_score.py [--subset val] [--specificity 0.9] RUN [RUN ...]

Two scores, on the temperature-scaled probabilities of RUN/eval-SUBSET/predictions.csv (the temperature
from that report): `complement`, 1 − P(normal), what `calibrate` uses today; and `prior-scaled`, the
largest P(disease) / prior(disease), the prior being the disease's share of the run's training eyes
(RUN/split.csv). For each, the threshold is the one `calibrate.referable_threshold` sets (the
`--specificity` quantile of the normals' scores, `calibrate.specificity_threshold`), and the table gives the specificity, the sensitivity
for any disease, per disease, and the mean of the per-disease sensitivities.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from collections import Counter
from pathlib import Path

import numpy as np

from eyescreen.calibrate import apply_temperature, specificity_threshold

sys.path.insert(0, str(Path(__file__).parent))
from ensemble import load as load_predictions  # noqa: E402  (the predictions.csv reader the ensemble uses)


def load(run: Path, subset: str, normal: str):
    classes, _, prob, y, _ = load_predictions(run, subset)
    report = json.loads((run / f"eval-{subset}" / "report.json").read_text())
    prob = apply_temperature(prob, report["calibration"]["temperature"])
    with (run / "split.csv").open(newline="") as f:
        train = Counter(r["label"] for r in csv.DictReader(f) if r["split"] == "train")
    prior = np.array([train[c] for c in classes], dtype=float) / sum(train[c] for c in classes)
    return classes, prob, y, prior, classes.index(normal)


def scores(prob: np.ndarray, prior: np.ndarray, normal: int) -> dict[str, np.ndarray]:
    disease = [k for k in range(prob.shape[1]) if k != normal]
    return {
        "complement": 1.0 - prob[:, normal],
        "prior-scaled": (prob[:, disease] / prior[disease]).max(axis=1),
    }


def operating_point(score, y, normal: int, specificity: float, classes) -> dict:
    threshold = specificity_threshold(score[y == normal], specificity)
    flagged = score > threshold
    per = {c: float(flagged[y == k].mean()) for k, c in enumerate(classes) if k != normal and (y == k).any()}
    return {
        "specificity": float((~flagged[y == normal]).mean()),
        "sensitivity": float(flagged[y != normal].mean()),
        "per_disease": per,
        "mean_per_disease": float(np.mean(list(per.values()))),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", type=Path)
    p.add_argument("--subset", default="val")
    p.add_argument("--specificity", type=float, default=0.9)
    p.add_argument("--normal-class", default="normal")
    args = p.parse_args()

    gains = []
    for run in args.runs:
        classes, prob, y, prior, normal = load(run, args.subset, args.normal_class)
        diseases = [c for k, c in enumerate(classes) if k != normal]
        if run == args.runs[0]:
            print(f"| run | score | specificity | sensitivity, any disease | {' | '.join(diseases)} "
                  f"| mean per disease |")  # fmt: skip
            print("|---|---|---|---|" + "---|" * (len(diseases) + 1))
        points = {}
        for name, score in scores(prob, prior, normal).items():
            points[name] = op = operating_point(score, y, normal, args.specificity, classes)
            per = " | ".join(f"{op['per_disease'].get(c, float('nan')):.3f}" for c in diseases)
            print(f"| {run.name} | {name} | {op['specificity']:.3f} | {op['sensitivity']:.3f} | {per} "
                  f"| {op['mean_per_disease']:.3f} |")  # fmt: skip
        a, b = points["complement"], points["prior-scaled"]
        gains.append((b["mean_per_disease"] - a["mean_per_disease"], b["sensitivity"] - a["sensitivity"]))
    mean_gain = np.mean([g[0] for g in gains])
    print(f"\nprior-scaled − complement, mean per-disease sensitivity: "
          f"{', '.join(f'{g[0]:+.3f}' for g in gains)} (mean {mean_gain:+.3f}); any disease: "
          f"{', '.join(f'{g[1]:+.3f}' for g in gains)} (mean {np.mean([g[1] for g in gains]):+.3f})")  # fmt: skip


if __name__ == "__main__":
    main()
