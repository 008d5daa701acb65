"""How to choose the decision rule's prior power tau, judged on validation alone.

The rule names argmax of P(class) x prior^-tau. Each run's validation predictions are split in halves by
patient, many times; on one half the temperature and tau are fitted by each way, on the other half the
balanced accuracy of that choice is scored. The test split is never read.

    python benchmarks/decision_rule_choice.py RUN [RUN ...]        # RUN/eval-val/predictions.csv (evaluate)
    python benchmarks/decision_rule_choice.py --repeats 300 RUN ...

Ways: max (the smallest tau with the highest balanced accuracy), 1se (the smallest tau within one
patient-bootstrap standard error of that maximum), bayes (tau = 1), argmax (tau = 0).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from sklearn.metrics import balanced_accuracy_score

from eyescreen.calibrate import (
    PRIOR_POWERS,
    apply_temperature,
    choose_power,
    decide,
    decision_scores,
    fit_temperature,
    rule_weights,
    score_spread,
)

sys.path.insert(0, str(Path(__file__).parent))
from ensemble import load  # noqa: E402  (the predictions.csv reader the ensemble uses)

WAYS = ("max", "1se", "bayes", "argmax")


def held_out_scores(prob, y, groups, n_classes, repeats: int, seed: int = 0) -> dict[str, list[float]]:
    """Balanced accuracy on the other half, per way, over `repeats` random halvings by patient."""
    rng = np.random.default_rng(seed)
    patients = np.unique(groups)
    out = {w: [] for w in WAYS}
    for _ in range(repeats):
        half = set(rng.choice(patients, len(patients) // 2, replace=False))
        fit = np.array([g in half for g in groups])
        if len(np.unique(y[fit])) < n_classes or len(np.unique(y[~fit])) < n_classes:
            continue  # a half without some class cannot fit or score the rule
        temperature = fit_temperature(prob[fit], y[fit])
        p_fit, p_score = apply_temperature(prob[fit], temperature), apply_temperature(prob[~fit], temperature)
        scores = decision_scores(p_fit, y[fit], n_classes)
        best = choose_power(scores)
        se = score_spread(p_fit, y[fit], groups[fit], n_classes, best, rng=rng)
        taus = {
            "max": best,
            "1se": choose_power(scores, PRIOR_POWERS, se),
            "bayes": 1.0,
            "argmax": 0.0,
        }
        for way, tau in taus.items():
            pred = decide(p_score, rule_weights(y[fit], n_classes, tau))
            out[way].append(float(balanced_accuracy_score(y[~fit], pred)))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--repeats", type=int, default=300)
    opts = ap.parse_args()
    print(
        f"tau grid: {', '.join(f'{t:g}' for t in PRIOR_POWERS)}; {opts.repeats} halvings of validation by patient\n"
    )
    print("| run | halvings | " + " | ".join(f"{w} (mean held-out bal. acc.)" for w in WAYS) + " |")
    print("|---|---|" + "---|" * len(WAYS))
    means = []
    for run in opts.runs:
        classes, _, prob, y, groups = load(run, "val")
        scores = held_out_scores(prob, y, groups, len(classes), opts.repeats)
        row = {w: float(np.mean(s)) for w, s in scores.items()}
        means.append(row)
        print(f"| {run.name} | {len(scores['max'])} | " + " | ".join(f"{row[w]:.3f}" for w in WAYS) + " |")
    print(
        "| **mean over runs** | | " + " | ".join(f"{np.mean([m[w] for m in means]):.3f}" for w in WAYS) + " |"
    )
    for w in WAYS[1:]:
        diffs = np.array([m[w] - m["max"] for m in means])
        print(f"{w} - max: mean {diffs.mean():+.4f}, lower on {(diffs < 0).sum()} of {len(diffs)} runs")


if __name__ == "__main__":
    main()
