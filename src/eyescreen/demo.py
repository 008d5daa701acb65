"""`eyescreen demo`: train a small model on the sample that ships with the package, evaluate it, report."""

from __future__ import annotations

import shutil
from importlib import resources
from pathlib import Path

from .config import preset
from .evaluate import evaluate
from .train import train

MARKER = ".eyescreen-demo"


def sample_manifest() -> Path:
    return Path(str(resources.files("eyescreen") / "sample" / "manifest.csv"))


def run_demo(out_dir: str | Path = "runs/demo", cache_dir=None, progress: bool = True, **overrides) -> dict:
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        if not (out / MARKER).exists():
            raise FileExistsError(f"{out}: exists and is not a demo run directory; choose another --out")
        shutil.rmtree(out)  # a previous demo run: start afresh
    out.mkdir(parents=True)
    (out / MARKER).write_text("created by `eyescreen demo`; safe to delete\n")
    cfg = preset("quick", **overrides)
    print(f"demo: training {cfg.model} ({cfg.epochs} epochs, {cfg.image_size} px) on the bundled sample")
    best = train(
        cfg, sample_manifest(), out, cache_dir=cache_dir, progress=progress, argv=["eyescreen", "demo"]
    )
    report = evaluate(
        best, out / "report", split_name="test", cache_dir=cache_dir, progress=progress, n_resamples=200
    )
    m, ci = report["metrics"], report["confidence_intervals"]
    lo, hi = ci["accuracy"]
    interval = f"[{lo:.2f}, {hi:.2f}]" if lo is not None else "[no interval]"
    print(
        f"\ndemo test split ({m['n']} images, {report['n_patients']} patients — a tiny sample, expect wide intervals):\n"
        f"  accuracy {m['accuracy']:.3f} {interval}, balanced accuracy {m['balanced_accuracy']:.3f}, "
        f"macro-AUC {m['macro_auc']:.3f}\n"
        "  80 eyes are far too few to learn from: these numbers show the pipeline working, not what a model\n"
        '  reaches (on ODIR-5K\'s 3,227 training eyes: macro-AUC 0.82-0.84 on a CPU; README, "What it is for")'
    )
    print(f"report: {report['files']['html']}\n        {report['files']['markdown']}")
    print(f"plots:  {out / 'report'}/*.png\ncheckpoint: {best}")
    print(next_steps(best))
    return report


def next_steps(checkpoint: Path) -> str:
    """What a newcomer does after the demo: their own data, then this model in a browser."""
    return (
        "\nnext:\n"
        '  your own photographs (README "Data formats"): eyescreen check-data --data MANIFEST_OR_FOLDER,\n'
        "    then eyescreen train --data MANIFEST_OR_FOLDER --out runs/mine\n"
        f"  screen photographs in a browser with this model: eyescreen serve --checkpoint {checkpoint}\n"
        f"  a heatmap of what it looked at: eyescreen explain --checkpoint {checkpoint} IMAGE_OR_FOLDER\n"
        f"  what this model is and what its numbers say: eyescreen info {checkpoint}"
    )
