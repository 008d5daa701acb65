"""`check-data`'s look at every file: as it was up to commit `d0af1ac` (each photograph decoded whole, one
after another) against now (decoded only as large as the field-of-view search looks, on threads), in one
run; also whether both report the same sizes, warnings and problems.

    python benchmarks/check_data_speed.py [FOLDER] [--limit 600] [--rounds 3]
    python benchmarks/check_data_speed.py --camera 24    # camera-sized JPEGs, as decode_speed.py makes them

FOLDER defaults to ODIR-5K's 256-px photographs beside the repository. Median of interleaved rounds.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import tempfile
import time
from pathlib import Path

from decode_speed import camera_sized  # this folder's benchmark: the script's folder is on sys.path

from eyescreen.check import _look
from eyescreen.data import list_images
from eyescreen.preprocess import ImageError, crop_to_field, read_all, read_image

ODIR = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "odir5k-256" / "images"


def look_before(path: Path):
    """check-data's loop body before: the whole photograph decoded for its size and the field search."""
    digest, size, notes = hashlib.sha256(path.read_bytes()).hexdigest(), None, []
    try:
        im = read_image(path)
        size = im.size
        crop_to_field(im, path, notes)
    except ImageError as e:
        return digest, size, notes, str(e)
    return digest, size, notes, None


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("folder", nargs="?", type=Path, default=ODIR)
    parser.add_argument("--limit", type=int, default=600)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--camera", type=int, help="this many 4096x3072 JPEGs instead of FOLDER")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        if args.camera:
            args.folder = Path(tmp)
            camera_sized(args.folder, args.camera)
        paths = sorted(list_images([args.folder]))[: args.limit]
        ways = {
            "before": lambda: [look_before(p) for p in paths],
            # the thumbnail for near-duplicates (added after these timings) left out of the comparison
            "now": lambda: [(d, s, n, e) for (d, s, _, n, e), _ in read_all(_look, paths)],
        }
        times: dict[str, list[float]] = {way: [] for way in ways}
        for _ in range(args.rounds):
            results = {}
            for way, run in ways.items():
                start = time.perf_counter()
                results[way] = run()
                times[way].append((time.perf_counter() - start) / len(paths) * 1000)
        same = sum(a == b for a, b in zip(results["before"], results["now"], strict=True))
    before, now = statistics.median(times["before"]), statistics.median(times["now"])
    source = "4096x3072 JPEGs (decode_speed.camera_sized)" if args.camera else f"images from {args.folder}"
    print(f"{len(paths)} {source}; {os.cpu_count()} cores")
    print(f"before {before:.1f} ms, now {now:.1f} ms an image ({before / now:.2f}x); "
          f"the same hash, size, warnings and problem for {same} of {len(paths)}")  # fmt: skip


if __name__ == "__main__":
    main()
