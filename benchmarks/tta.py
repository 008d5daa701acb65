"""Test-time augmentation, chosen on validation: none, flips (4 views) or quarter turns x flips (8 views).

    python benchmarks/tta.py RUN [RUN ...]
    python benchmarks/tta.py --chosen flips RUN [RUN ...]   # the way was chosen before, on other runs

Each run is evaluated on its validation split in the three ways (RUN/eval-val, RUN/eval-val-tta-MODE;
reports already there are reused). The way with the best mean validation macro-AUC over the runs is
chosen (or the one given by --chosen), and only that way is evaluated on the test split
(RUN/eval-test-tta-MODE), once per run.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from eyescreen.evaluate import evaluate

MODES = (None, "flips", "dihedral")


def report(run: Path, split: str, mode: str | None) -> dict:
    out = run / (f"eval-{split}" if mode is None else f"eval-{split}-tta-{mode}")
    if (out / "report.json").is_file():
        return json.loads((out / "report.json").read_text())
    return evaluate(run / "best.safetensors", out, split_name=split, tta=mode, progress=False)


def scores(r: dict) -> str:
    rule = r.get("decision", {}).get("metrics", {}).get("balanced_accuracy")
    lo, hi = r["confidence_intervals"]["macro_auc"]
    text = f"{r['metrics']['macro_auc']:.3f} [{lo:.3f}, {hi:.3f}]"
    return text + (f", bal. acc. (rule) {rule:.3f}" if rule is not None else "")


def main(args: list[str]) -> None:
    given = None
    if args[:1] == ["--chosen"]:
        given, args = args[1], args[2:]
        if given not in MODES:
            raise SystemExit(f"--chosen {given}: choose one of {', '.join(m for m in MODES if m)}")
    runs = [Path(a) for a in args]
    val = {(run, mode): report(run, "val", mode) for run in runs for mode in MODES}
    print("| run | validation: no TTA | flips (4 views) | quarter turns x flips (8 views) |")
    print("|---|---|---|---|")
    for run in runs:
        print(f"| {run.name} | " + " | ".join(scores(val[run, m]) for m in MODES) + " |")
    mean = {m: sum(val[r, m]["metrics"]["macro_auc"] for r in runs) / len(runs) for m in MODES}
    chosen = max(MODES, key=lambda m: (mean[m], m is None))  # a tie keeps the cheaper way
    print("\nmean validation macro-AUC: " + ", ".join(f"{m or 'none'} {v:.4f}" for m, v in mean.items()))
    print(f"best on these runs' validation: {chosen or 'no TTA'}")
    if given:
        chosen = given
        print(f"used, as chosen before: {chosen}")
    if chosen is None:
        return
    print(f"\n| run | test, {chosen} (read once) | test, no TTA (RUN/eval-test) |")
    print("|---|---|---|")
    for run in runs:
        plain = run / "eval-test" / "report.json"
        before = scores(json.loads(plain.read_text())) if plain.is_file() else "not evaluated"
        print(f"| {run.name} | {scores(report(run, 'test', chosen))} | {before} |")


if __name__ == "__main__":
    if sys.argv[1:2] in ([], ["-h"], ["--help"]):  # the usage is the module's docstring
        print(__doc__.strip())
        sys.exit(0 if sys.argv[1:] else 2)
    main(sys.argv[1:])
