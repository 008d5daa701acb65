"""How often a patient-level split alone parts one photograph saved under two patient ids, and what
`train`'s split does about it (data.keep_copies_together): for each seed, the sets of linked patients
that `make_split` puts in two splits, and the eyes `train` moves to keep each set in one.

    python benchmarks/split_copies.py [--data MANIFEST] [--classes normal,dr,amd,glaucoma] [--seeds 10]
        [--compare RUN/split.csv]

`--compare`: also says whether seed 0's split, copies kept together, is that file's (the split every
ODIR-5K number in RESULTS.md was measured on came from `train --seed 0` before the copies were joined).
"""

from __future__ import annotations

import argparse
import csv
import time
from pathlib import Path

from eyescreen.data import keep_copies_together, load_dataset, make_split, parse_classes
from eyescreen.near_duplicates import copies_among

ODIR = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "odir5k-256" / "manifest.csv"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=ODIR)
    ap.add_argument("--classes", default="normal,dr,amd,glaucoma")
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--compare", type=Path)
    opts = ap.parse_args()
    dataset = load_dataset(opts.data, parse_classes(opts.classes))
    start = time.perf_counter()
    copies = copies_among([r.path for r in dataset.records])
    seconds = time.perf_counter() - start
    print(f"{len(dataset.records)} photographs of {opts.data}; copies found in {seconds:.1f} s:")
    for group in copies:
        print("  " + " = ".join(f"{dataset.records[k].key} ({dataset.records[k].group})" for k in group))
    print(
        "\n| seed | linked patients | make_split's splits for them | eyes moved | now in |\n|---|---|---|---|---|"
    )
    first = None
    for seed in range(opts.seeds):
        split = make_split(dataset, seed=seed)
        kept, linked = keep_copies_together(dataset, split, copies)
        for names, where in linked:
            before = sorted({split[r.key] for r in dataset.records if r.group in names})
            moved = sum(split[r.key] != kept[r.key] for r in dataset.records if r.group in names)
            print(f"| {seed} | {', '.join(names)} | {', '.join(before)} | {moved} | {where} |")
        if seed == 0:
            first = kept
    if opts.compare:
        with open(opts.compare, newline="") as f:
            stored = {row["image"]: row["split"] for row in csv.DictReader(f)}
        print(f"\nseed 0, copies kept together, is {opts.compare}'s split: {first == stored}")


if __name__ == "__main__":
    main()
