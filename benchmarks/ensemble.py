"""A small ensemble of trained runs: average their per-image probabilities, members chosen on validation.

Each run must have been evaluated on both splits (evaluate writes predictions.csv):
    eyescreen evaluate --checkpoint RUN/best.safetensors --subset val  --out RUN/eval-val
    eyescreen evaluate --checkpoint RUN/best.safetensors --subset test --out RUN/eval-test
then
    python benchmarks/ensemble.py RUN [RUN ...]
    python benchmarks/ensemble.py --tta dihedral RUN [RUN ...]   # RUN/eval-{val,test}-tta-dihedral (benchmarks/tta.py)

Greedy forward selection (Caruana et al. 2004) on validation macro-AUC picks the members, without
replacement; the test split is scored once, for the chosen ensemble and for the average of all runs.
Members may differ in image size or preprocessing: each brings its own predictions.
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import numpy as np

from eyescreen.metrics import bootstrap_ci, headline_metrics


def load(run: Path, split: str, tta: str = ""):
    """`tta`: read the evaluation made with that test-time augmentation (benchmarks/tta.py)."""
    folder = f"eval-{split}" + (f"-tta-{tta}" if tta else "")
    with open(run / folder / "predictions.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    classes = [k.removeprefix("prob_") for k in rows[0] if k.startswith("prob_")]
    keys = [r["image"] for r in rows]
    prob = np.array([[float(r[f"prob_{c}"]) for c in classes] for r in rows])
    y = np.array([classes.index(r["true"]) for r in rows])
    groups = np.array([r["patient"] for r in rows])
    return classes, keys, prob, y, groups


def aligned(runs: list[Path], split: str, tta: str = ""):
    """Probabilities [runs, images, classes] over the images every run could read, in one order."""
    loaded = [load(r, split, tta) for r in runs]
    classes = loaded[0][0]
    if any(c != classes for c, *_ in loaded):
        raise SystemExit("the runs do not share their classes")
    common = sorted(set.intersection(*(set(k) for _, k, *_ in loaded)))
    probs = []
    for _, keys, prob, _, _ in loaded:
        where = {k: i for i, k in enumerate(keys)}
        probs.append(prob[[where[k] for k in common]])
    _, keys, _, y, groups = loaded[0]
    where = {k: i for i, k in enumerate(keys)}
    idx = [where[k] for k in common]
    return np.stack(probs), y[idx], groups[idx]


def greedy(val_probs: np.ndarray, y: np.ndarray) -> list[int]:
    chosen: list[int] = []
    best = -np.inf
    while True:
        candidates = [i for i in range(len(val_probs)) if i not in chosen]
        if not candidates:
            return chosen
        scores = {i: headline_metrics(y, val_probs[chosen + [i]].mean(0))["macro_auc"] for i in candidates}
        i = max(scores, key=scores.get)
        if scores[i] <= best:
            return chosen
        chosen.append(i)
        best = scores[i]


def line(name: str, y, prob, groups) -> str:
    m, ci = headline_metrics(y, prob), bootstrap_ci(y, prob, groups)
    cells = [
        f"{m[k]:.3f} [{ci[k][0]:.3f}, {ci[k][1]:.3f}]" for k in ("accuracy", "balanced_accuracy", "macro_auc")
    ]
    return f"| {name} | " + " | ".join(cells) + " |"


def main(args: list[str]) -> None:
    tta = ""
    if args[:1] == ["--tta"]:
        tta, args = args[1], args[2:]
    runs = [Path(a) for a in args]
    val, y_val, _ = aligned(runs, "val", tta)
    test, y_test, g_test = aligned(runs, "test", tta)
    print("validation macro-AUC per run: " + ", ".join(
        f"{r.name} {headline_metrics(y_val, p)['macro_auc']:.3f}" for r, p in zip(runs, val, strict=True)))  # fmt: skip
    chosen = greedy(val, y_val)
    val_auc = headline_metrics(y_val, val[chosen].mean(0))["macro_auc"]
    print(f"chosen on validation: {', '.join(runs[i].name for i in chosen)} (val macro-AUC {val_auc:.3f})\n")
    print("| test split | accuracy [95% CI] | balanced acc. [95% CI] | macro-AUC [95% CI] |")
    print("|---|---|---|---|")
    best_single = max(range(len(runs)), key=lambda i: headline_metrics(y_val, val[i])["macro_auc"])
    print(line(f"best single run on val ({runs[best_single].name})", y_test, test[best_single], g_test))
    print(line(f"ensemble chosen on val ({len(chosen)} runs)", y_test, test[chosen].mean(0), g_test))
    print(line(f"average of all {len(runs)} runs", y_test, test.mean(0), g_test))


if __name__ == "__main__":
    main(sys.argv[1:])
