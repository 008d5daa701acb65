"""Memory of `eyescreen predict` on a large folder: resident memory sampled while it streams through
N images (hard links to the bundled sample photographs, so no disk is spent). Flat = the peak late in
the run is no higher than early on.

python benchmarks/memory_predict.py --checkpoint runs/recipes/screen/best.safetensors --images 10000
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from importlib import resources
from pathlib import Path


def rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except FileNotFoundError:
        return None
    return None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--images", type=int, default=10000)
    args = parser.parse_args()
    sample = sorted(p for p in (resources.files("eyescreen") / "sample" / "images").iterdir())
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "images"
        folder.mkdir()
        for k in range(args.images):
            os.link(sample[k % len(sample)], folder / f"{k:05d}.jpg")
        out = Path(tmp) / "predictions.csv"
        start = time.perf_counter()
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "eyescreen",
                "predict",
                str(folder),
                "--checkpoint",
                args.checkpoint,
                "--out",
                str(out),
                "--no-progress",
            ],  # fmt: skip
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        samples = []
        while proc.poll() is None:
            value = rss_mb(proc.pid)
            if value is not None:
                samples.append((time.perf_counter() - start, value))
            time.sleep(0.5)
        wall = time.perf_counter() - start
        rows = sum(1 for _ in open(out)) - 1 if out.exists() else 0
    if proc.returncode != 0 or not samples:
        print(f"predict failed (exit {proc.returncode})")
        return 1
    n = len(samples)
    quarter = [max(v for _, v in samples[k * n // 4 : (k + 1) * n // 4] or [(0, 0)]) for k in range(4)]
    print(f"{rows} images predicted in {wall:.0f} s ({rows / wall:.1f} images/s, decoding included)")
    print("peak RSS per quarter of the run (MB): " + " / ".join(f"{q:.0f}" for q in quarter))
    print(
        f"peak {max(v for _, v in samples):.0f} MB; last quarter minus second quarter: {quarter[3] - quarter[1]:+.0f} MB"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
