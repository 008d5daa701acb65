"""A small ensemble of trained runs: average their per-image probabilities, members chosen on validation.

Each run must have been evaluated on both splits (evaluate writes predictions.csv):
    eyescreen evaluate --checkpoint RUN/best.safetensors --subset val  --out RUN/eval-val
    eyescreen evaluate --checkpoint RUN/best.safetensors --subset test --out RUN/eval-test
then
    python benchmarks/ensemble.py RUN [RUN ...]
    python benchmarks/ensemble.py --tta dihedral RUN [RUN ...]   # RUN/eval-{val,test}-tta-dihedral (benchmarks/tta.py)
    python benchmarks/ensemble.py --fellow RUN [RUN ...]   # each run's eyes blended with the fellow eye
                                                           # (a both-eye model's run: its eyes/ as they are)
    python benchmarks/ensemble.py --validation-only ...    # choose and score on validation; test not read

Greedy forward selection (Caruana et al. 2004) on validation macro-AUC picks the members, without
replacement; the test split is scored once, for the chosen ensemble and for the average of all runs.
Members may differ in image size or preprocessing: each brings its own predictions. The decision
rule (prior^-tau, `calibrate.fit_decision`) is fitted on the ensemble's validation probabilities and
applied unchanged to test.
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import numpy as np

from eyescreen.calibrate import fit_decision
from eyescreen.metrics import bootstrap_ci, headline_metrics


def load(run: Path, split: str, tta: str = "", fellow: bool = False):
    """`tta`: read the evaluation made with that test-time augmentation (benchmarks/tta.py); `fellow`:
    its predictions blended with the fellow eye (evaluate's fellow-eye/ folder). A both-eye model's
    member is its eyes' predictions (evaluate's eyes/ folder): each already sees its fellow eye."""
    folder = run / (f"eval-{split}" + (f"-tta-{tta}" if tta else ""))
    if (folder / "eyes").is_dir():
        folder = folder / "eyes"
    elif fellow:
        folder = folder / "fellow-eye"
    with open(folder / "predictions.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    classes = [k.removeprefix("prob_") for k in rows[0] if k.startswith("prob_")]
    keys = [r["image"] for r in rows]
    prob = np.array([[float(r[f"prob_{c}"]) for c in classes] for r in rows])
    y = np.array([classes.index(r["true"]) for r in rows])
    groups = np.array([r["patient"] for r in rows])
    return classes, keys, prob, y, groups


def aligned(runs: list[Path], split: str, tta: str = "", fellow: bool = False):
    """Probabilities [runs, images, classes] over the images every run could read, in one order."""
    loaded = [load(r, split, tta, fellow) for r in runs]
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


def line(name: str, y, prob, groups, weights=None) -> str:
    m, ci = headline_metrics(y, prob, weights), bootstrap_ci(y, prob, groups, weights=weights)
    cells = [
        f"{m[k]:.3f} [{ci[k][0]:.3f}, {ci[k][1]:.3f}]" for k in ("accuracy", "balanced_accuracy", "macro_auc")
    ]
    return f"| {name} | " + " | ".join(cells) + " |"


def main(args: list[str]) -> None:
    tta, fellow, validation_only = "", "--fellow" in args, "--validation-only" in args
    args = [a for a in args if a not in ("--fellow", "--validation-only")]
    if args[:1] == ["--tta"]:
        tta, args = args[1], args[2:]
    runs = [Path(a) for a in args]
    val, y_val, _ = aligned(runs, "val", tta, fellow)
    n_classes = val.shape[2]
    print("validation macro-AUC per run: " + ", ".join(
        f"{r.name} {headline_metrics(y_val, p)['macro_auc']:.3f}" for r, p in zip(runs, val, strict=True)))  # fmt: skip
    chosen = greedy(val, y_val)
    candidates = {"chosen": chosen, "all": list(range(len(runs)))}
    rules = {}
    for name, members in candidates.items():
        rules[name] = fit_decision(val[members].mean(0), y_val, n_classes)
        auc = headline_metrics(y_val, val[members].mean(0))["macro_auc"]
        d = rules[name]
        print(f"{name} on validation: {', '.join(runs[i].name for i in members)}: macro-AUC {auc:.3f}, balanced "
              f"accuracy {d['val_balanced_accuracy_argmax']:.3f} arg-max, {d['val_balanced_accuracy']:.3f} with "
              f"the rule (tau {d['prior_power']:.2f})")  # fmt: skip
    if validation_only:
        return
    test, y_test, g_test = aligned(runs, "test", tta, fellow)
    print("\n| test split | accuracy [95% CI] | balanced acc. [95% CI] | macro-AUC [95% CI] |")
    print("|---|---|---|---|")
    best_single = max(range(len(runs)), key=lambda i: headline_metrics(y_val, val[i])["macro_auc"])
    print(line(f"best single run on val ({runs[best_single].name})", y_test, test[best_single], g_test))
    for label, name in (
        (f"ensemble chosen on val ({len(chosen)} runs)", "chosen"),
        (f"average of all {len(runs)} runs", "all"),
    ):
        members, weights = candidates[name], np.asarray(rules[name]["class_weights"])
        print(line(label, y_test, test[members].mean(0), g_test))
        print(line(f"{label}, decision rule", y_test, test[members].mean(0), g_test, weights))


if __name__ == "__main__":
    if sys.argv[1:2] in ([], ["-h"], ["--help"]):  # the usage is the module's docstring
        print(__doc__.strip())
        sys.exit(0 if sys.argv[1:] else 2)
    main(sys.argv[1:])
