"""Print Markdown table rows for RESULTS.md from evaluated run directories.

python benchmarks/results_table.py runs/seed-baseline/resnet18 runs/seed-baseline/seed-cnn
python benchmarks/results_table.py --decision runs/recipes/screen ...   # plain argmax vs decision rule
python benchmarks/results_table.py --levels runs/binocular/*            # per eye and per patient
python benchmarks/results_table.py --validation runs/recipes/* ...       # what a choice may use, best first
python benchmarks/results_table.py --fellow runs/recipes/* ...           # each eye alone vs with its fellow eye
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path


def cell(metrics: dict, intervals: dict, key: str) -> str:
    lo, hi = intervals[key]
    return f"{metrics[key]:.3f} [{lo:.3f}, {hi:.3f}]"


def sensitivities(metrics: dict, classes: list[str]) -> str:
    return " / ".join(f"{metrics['per_class'][c]['sensitivity']:.2f}" for c in classes)


def row(run: Path) -> str:
    report = json.loads((run / "eval-test" / "report.json").read_text())
    info = json.loads((run / "run_info.json").read_text())
    cfg = json.loads((run / "config.json").read_text())["config"]
    with open(run / "metrics.csv") as f:
        log = list(csv.DictReader(f))
    minutes = sum(float(r["seconds"]) for r in log) / 60
    m, ci = report["metrics"], report["confidence_intervals"]
    per_class = sensitivities(m, report["classes"])
    return (
        f"| {run.name} | {len(log)}/{cfg['epochs']} (best {report['epoch']}) | {cell(m, ci, 'accuracy')} | "
        f"{cell(m, ci, 'balanced_accuracy')} | {cell(m, ci, 'macro_auc')} | {m['macro_f1']:.3f} | {m['cohen_kappa']:.3f} | "
        f"{m['ece']:.3f} | {per_class} | {minutes:.0f} min | `{(info.get('git_commit') or '?')[:8]}` |"
    )


def decision_row(run: Path) -> str:
    report = json.loads((run / "eval-test" / "report.json").read_text())
    d = report["decision"]
    m, ci, dm, dci = (
        report["metrics"],
        report["confidence_intervals"],
        d["metrics"],
        d["confidence_intervals"],
    )
    per_class = sensitivities(dm, report["classes"])
    return (
        f"| {run.name} | {d['prior_power']:.2f} | {d['val_balanced_accuracy_argmax']:.3f} -> "
        f"{d['val_balanced_accuracy']:.3f} | {cell(m, ci, 'balanced_accuracy')} | "
        f"{cell(dm, dci, 'balanced_accuracy')} | {cell(dm, dci, 'accuracy')} | {per_class} |"
    )


def levels_row(run: Path) -> str:
    """Per-eye and per-patient metrics of a single-eye run (patients: the more diseased eye) or a
    both-eye run (eyes: its per-eye outputs)."""
    report = json.loads((run / "eval-test" / "report.json").read_text())
    if report.get("level") == "patient":
        patient, eye = report, report["eye_level"]
    else:
        eye, patient = report, report["patient_level"]
    cells = [
        cell(level["metrics"], level["confidence_intervals"], key)
        for level in (eye, patient)
        for key in ("balanced_accuracy", "macro_auc")
    ]
    return f"| {run.name} | {eye['metrics']['n']} / {patient['metrics']['n']} | " + " | ".join(cells) + " |"


def validation_row(run: Path) -> tuple[float, str]:
    """The validation numbers a recipe is chosen on (selected epoch and last epoch), then test AUC ("not
    read" for a run evaluated on validation only, as `recipe.sh` does with SUBSET=val)."""
    test_report = run / "eval-test" / "report.json"
    report = json.loads(
        (test_report if test_report.is_file() else run / "eval-val" / "report.json").read_text()
    )
    with open(run / "metrics.csv") as f:
        log = list(csv.DictReader(f))
    best, last = log[report["epoch"] - 1], log[-1]
    minutes = sum(float(r["seconds"]) for r in log) / 60
    auc = float(best["val_macro_auc"])
    test_auc = f"{report['metrics']['macro_auc']:.3f}" if test_report.is_file() else "not read"
    return auc, (
        f"| {run.name} | {report['epoch']}/{len(log)} | {auc:.3f} | {float(best['val_balanced_accuracy']):.3f} | "
        f"{float(last['val_macro_auc']):.3f} | {test_auc} | {minutes:.0f} min |"
    )


def fellow_row(run: Path) -> str:
    """Each eye alone vs blended with its fellow eye (weight chosen on validation): validation, then the
    test split (macro-AUC, balanced accuracy with the decision rule, screening sensitivity)."""
    val = json.loads((run / "eval-val" / "report.json").read_text())
    test = json.loads((run / "eval-test" / "report.json").read_text())
    if "with_fellow_eye" not in val or "with_fellow_eye" not in test:  # stopped early, or no fellow eyes
        return (
            f"| {run.name} | no fellow-eye part in its eval-val/eval-test reports (evaluation cut short?) |"
        )
    vf, tf = val["with_fellow_eye"], test["with_fellow_eye"]

    def rule(block):
        return cell(
            block["decision"]["metrics"], block["decision"]["confidence_intervals"], "balanced_accuracy"
        )

    def screening(block):
        r = block["calibration"]["referable"]
        return f"{r['sensitivity']:.3f} at {r['specificity']:.3f}"

    per_class = " / ".join(f"{tf['metrics']['per_class'][c]['roc_auc']:.2f}" for c in test["classes"])
    return (
        f"| {run.name} | {tf['weight']:.2f} | {vf['eyes_with_fellow']}/{val['metrics']['n']}, "
        f"{tf['eyes_with_fellow']}/{test['metrics']['n']} | {val['metrics']['macro_auc']:.3f} -> "
        f"{vf['metrics']['macro_auc']:.3f} | {cell(test['metrics'], test['confidence_intervals'], 'macro_auc')} | "
        f"{cell(tf['metrics'], tf['confidence_intervals'], 'macro_auc')} | {rule(test)} | {rule(tf)} | "
        f"{screening(test)} | {screening(tf)} | {per_class} |"
    )


def main() -> None:
    if sys.argv[1:2] in ([], ["-h"], ["--help"]):  # the usage is the module's docstring
        print(__doc__.strip())
        sys.exit(0 if sys.argv[1:] else 2)
    if sys.argv[1:2] == ["--fellow"]:
        print("| run | weight | eyes with a fellow (val, test) | val macro-AUC alone -> with | test macro-AUC alone | "
              "test macro-AUC with fellow | test bal. acc. rule, alone | with fellow | test screening sens. at spec., "
              "alone | with fellow | test AUC per class with fellow |")  # fmt: skip
        print("|---|---|---|---|---|---|---|---|---|---|---|")
        for arg in sys.argv[2:]:
            print(fellow_row(Path(arg)))
        sys.exit(0)
    if sys.argv[1:2] == ["--validation"]:
        print("| run | selected epoch | val macro-AUC | val balanced acc. (arg-max) | val macro-AUC, last epoch | "
              "test macro-AUC | train time |")  # fmt: skip
        print("|---|---|---|---|---|---|---|")
        for _, line in sorted((validation_row(Path(arg)) for arg in sys.argv[2:]), reverse=True):
            print(line)
        sys.exit(0)
    if sys.argv[1:2] == ["--levels"]:
        print(
            "| run | eyes / patients | eye balanced acc. | eye macro-AUC | patient balanced acc. | patient macro-AUC |"
        )
        print("|---|---|---|---|---|---|")
        for arg in sys.argv[2:]:
            print(levels_row(Path(arg)))
        sys.exit(0)
    if sys.argv[1:2] == ["--decision"]:
        print(
            "| run | tau | val balanced acc. argmax -> rule | test balanced acc. argmax [95% CI] | "
            "test balanced acc. rule [95% CI] | test accuracy rule [95% CI] | sensitivity per class (rule) |"
        )
        print("|---|---|---|---|---|---|---|")
        for arg in sys.argv[2:]:
            print(decision_row(Path(arg)))
        sys.exit(0)
    print(
        "| run | epochs run (best) | accuracy [95% CI] | balanced acc. [95% CI] | macro-AUC [95% CI] | "
        "macro-F1 | kappa | ECE | sensitivity per class | train time | commit |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for arg in sys.argv[1:]:
        print(row(Path(arg)))


if __name__ == "__main__":
    try:
        main()
    except FileNotFoundError as e:  # a run not trained here, or not evaluated on the split a table needs
        sys.exit(f"{e.filename}: missing (a training run's folder, evaluated with `eyescreen evaluate`)")
