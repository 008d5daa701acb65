"""The first reading of a dataset (nothing cached yet): `load_stack` on one thread against its default
(one thread per core, at most 8), in one run, each round on empty cache folders.

    python benchmarks/cache_speed.py [FOLDER] [--limit 600] [--size 256] [--enhance graham] [--rounds 3]
    python benchmarks/cache_speed.py --camera 24      # camera-sized JPEGs, made as decode_speed.py makes them

FOLDER defaults to ODIR-5K's 256-px photographs beside the repository. Variants are interleaved round
by round and the median round counts. Also checks that both give the same images.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch
from decode_speed import camera_sized  # this folder's benchmark: the script's folder is on sys.path

from eyescreen.data import list_images
from eyescreen.preprocess import ImageCache, Preprocessing, load_stack

ODIR = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "odir5k-256" / "images"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("folder", nargs="?", type=Path, default=ODIR)
    parser.add_argument("--limit", type=int, default=600)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--enhance", default="graham")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--camera", type=int, help="this many 4096x3072 JPEGs instead of FOLDER")
    args = parser.parse_args()
    prep = Preprocessing(args.size, enhance=args.enhance)
    default = min(8, torch.get_num_threads())  # what read_all uses
    times: dict[int, list[float]] = {1: [], default: []}
    with tempfile.TemporaryDirectory() as tmp:
        if args.camera:
            (Path(tmp) / "camera").mkdir()
            args.folder = Path(tmp) / "camera"
            camera_sized(args.folder, args.camera)
        paths = sorted(list_images([args.folder]))[: args.limit]
        for r in range(args.rounds):
            stacks = {}
            for workers in times:
                cache = ImageCache(prep, Path(tmp) / f"{r}-{workers}")
                start = time.perf_counter()
                stacks[workers] = load_stack(paths, cache, progress=False, workers=workers)[0]
                times[workers].append((time.perf_counter() - start) / len(paths) * 1000)
            assert torch.equal(stacks[1], stacks[default]), "threads changed the images"
    one, many = statistics.median(times[1]), statistics.median(times[default])
    source = "4096x3072 JPEGs (decode_speed.camera_sized)" if args.camera else f"images from {args.folder}"
    print(f"{len(paths)} {source}, {args.size} px, {args.enhance}; {os.cpu_count()} cores")
    print("| threads | ms / image (first reading) | speed-up |")
    print("|---|---|---|")
    print(f"| 1 | {one:.1f} | 1.00x |")
    print(f"| {default} (default) | {many:.1f} | {one / many:.2f}x |")


if __name__ == "__main__":
    main()
