"""Where check-data's "the same photograph saved twice" line draws its limit: the nearest pairs of a
dataset's photographs by thumbnail distance (near_duplicates: 16 x 16 colour, root mean square in grey
levels), whether each pair is under one patient id, and the gap between the copies and the rest.

    python benchmarks/resaved_check.py [--data MANIFEST] [--nearest 12]

Reads the photographs as check-data does (read_image at MASK_SIDE, EXIF-turned); prints the pairs and
the time the pairwise search took.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from eyescreen.data import read_dataset
from eyescreen.near_duplicates import LIMIT, distances_within, read_thumbnail
from eyescreen.preprocess import read_all

ODIR = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "odir5k-256" / "manifest.csv"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=ODIR)
    ap.add_argument("--nearest", type=int, default=12)
    opts = ap.parse_args()
    raw, _ = read_dataset(opts.data, None)
    read = [(r, result) for r, (result, error) in
            zip(raw, read_all(read_thumbnail, [r.path for r in raw]),
                strict=True) if error is None]  # fmt: skip
    thumbs = np.stack([t for _, t in read])
    start = time.perf_counter()
    within = distances_within(thumbs)
    seconds = time.perf_counter() - start
    wide = sorted(distances_within(thumbs, limit=8.0), key=lambda pair: pair[2])[: opts.nearest]
    print(f"{len(thumbs)} photographs of {opts.data}; pairwise search {seconds:.1f} s; "
          f"{len(within)} pairs within {LIMIT} level(s)")  # fmt: skip
    print("\n| distance (levels) | photograph | photograph | one patient id |\n|---|---|---|---|")
    for i, j, d in wide:
        (a, _), (b, _) = read[i], read[j]
        print(
            f"| {d:.2f} | {a.key} ({a.group}) | {b.key} ({b.group}) | {'yes' if a.group == b.group else 'no'} |"
        )


if __name__ == "__main__":
    main()
