"""Training speed of the real `eyescreen train`, variants side by side in one run (a few epochs each,
one after another, on the same machine): where a GPU epoch's time goes, as a ratio to the first variant.

    python benchmarks/train_speed.py --data MANIFEST --split SPLIT [--epochs 4] [--only NAME ...] \\
        [--set TRAIN OPTIONS...]      # e.g. --set --image-size 64 --model tiny-cnn for a dry run on a CPU

Variants (the GPU default recipe, graham-findings-256, unless --set changes it):
    every-epoch   checkpoints and resume state written after every epoch (`--save-every 0`)
    spaced        written at most every 30 s (`--save-every 30`, the default on a GPU)
    compiled      as `spaced`, under `torch.compile` (`--compile`; its compile time is in the first epoch)
    fp32, bf16    the precision fixed (`--precision`): on a CPU with native bf16, what `auto` measures
                  with a few steps (cpu_precision.py), here over whole epochs of the real trainer

For each: the median of the epochs' own clocks (metrics.csv `seconds`, the first epoch left out: warm-up
and compilation) and the wall time of the whole command; then each variant's ratio to the first one
named. Wall time includes what the epochs' clocks leave out (startup, loading the cached images,
checkpoint writes, calibration at the end), so compare variants over the same number of epochs.
"""

from __future__ import annotations

import argparse
import csv
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

VARIANTS = {
    "every-epoch": ["--save-every", "0"],
    "spaced": ["--save-every", "30"],
    "compiled": ["--save-every", "30", "--compile"],
    "fp32": ["--precision", "fp32"],  # on a CPU: which precision `--precision auto` should pick here
    "bf16": ["--precision", "bf16"],
}


def run(name: str, opts, out: Path) -> dict:
    cmd = [sys.executable, "-m", "eyescreen", "train", "--data", str(opts.data), "--out", str(out / name),
           "--preset", "graham-findings-256", "--classes", opts.classes, "--epochs", str(opts.epochs),
           "--no-progress", *(["--split", str(opts.split)] if opts.split else []),
           *VARIANTS[name], *opts.set]  # fmt: skip
    t0 = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        raise SystemExit(f"{name} failed (exit {done.returncode}):\n{done.stderr[-2000:]}")
    with open(out / name / "metrics.csv", newline="") as f:
        seconds = [float(r["seconds"]) for r in csv.DictReader(f)]
    after_first = seconds[1:] or seconds
    return {
        "name": name,
        "epoch_clock": statistics.median(after_first),
        "wall": wall,
        "epochs": len(seconds),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--split", type=Path)
    ap.add_argument("--classes", default="normal,dr,amd,glaucoma")
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--only", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    ap.add_argument("--out", type=Path, help="keep the runs here (default: a temporary folder)")
    ap.add_argument("--set", nargs=argparse.REMAINDER, default=[], help="train options for every variant")
    opts = ap.parse_args()
    import torch

    print(f"torch {torch.__version__}, cuda {torch.cuda.is_available()}"
          + (f" ({torch.cuda.get_device_name()})" if torch.cuda.is_available() else ""), flush=True)  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        out = opts.out or Path(tmp)
        rows = []
        for name in opts.only:
            rows.append(run(name, opts, out))
            print(f"{name}: done in {rows[-1]['wall']:.0f}s", flush=True)
    base = rows[0]
    print(
        f"\n| variant | epochs | epoch clock (median, s) | wall (s) | ratio to {base['name']} (epoch clock / wall) |"
    )
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['name']} | {r['epochs']} | {r['epoch_clock']:.2f} | {r['wall']:.0f} | "
              f"{base['epoch_clock'] / r['epoch_clock']:.2f}x / {base['wall'] / r['wall']:.2f}x |")  # fmt: skip


if __name__ == "__main__":
    main()
