"""Photographs that must stay on one side of a split (photo_links: copies of one photograph, and one eye
photographed again) under different patient ids: which, how often a plain patient-level split parts
them, and what `train`'s split does about it (data.keep_linked_together).

    python benchmarks/split_links.py [--data MANIFEST] [--classes normal,dr,amd,glaucoma] [--seeds 10]
        [--compare RUN/split.csv] [--runs RUN ...]

`--compare`: which links that split file parts, and whether seed 0's split with the links kept together
is that file's (every ODIR-5K number in RESULTS.md was measured on the split `train --seed 0` made before
links were kept together). `--runs`: for runs evaluated on that split (RUN/eval-test/predictions.csv),
the test macro-AUC with and without the test eyes whose twin is in train.
"""

from __future__ import annotations

import argparse
import csv
import time
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score

from eyescreen.data import keep_linked_together, linked_apart, load_dataset, make_split, parse_classes
from eyescreen.near_duplicates import copies_among
from eyescreen.same_eye import same_eye_pairs

ODIR = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "odir5k-256" / "manifest.csv"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=ODIR)
    ap.add_argument("--classes", default="normal,dr,amd,glaucoma")
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--compare", type=Path)
    ap.add_argument("--runs", nargs="*", type=Path, default=[])
    opts = ap.parse_args()
    dataset = load_dataset(opts.data, parse_classes(opts.classes))
    records = dataset.records
    paths = [r.path for r in records]
    start = time.perf_counter()
    copies = copies_among(paths)
    middle = time.perf_counter()
    eyes = same_eye_pairs(paths, sides=[r.eye for r in records])
    end = time.perf_counter()
    print(f"{len(records)} photographs of {opts.data}; copies found in {middle - start:.1f} s, one eye taken "
          f"again in {end - middle:.1f} s (descriptors from the cache if it holds them)")  # fmt: skip
    print("\n| link | photograph | photograph | alike |\n|---|---|---|---|")
    for group in copies:
        print(f"| copy | {' | '.join(f'{records[k].key} ({records[k].group})' for k in group)} | |")
    for i, j, score in sorted(eyes, key=lambda pair: -pair[2]):
        if records[i].group != records[j].group:
            print(
                f"| one eye | {records[i].key} ({records[i].group}) | {records[j].key} ({records[j].group}) | {score:.3f} |"
            )
    links = [list(group) for group in copies] + [[i, j] for i, j, _ in eyes]
    print("\n| seed | sets of linked patients | parted by make_split | eyes moved |\n|---|---|---|---|")
    first = None
    for seed in range(opts.seeds):
        split = make_split(dataset, seed=seed)
        kept, sets = keep_linked_together(dataset, split, links)
        parted = sum(len({split[r.key] for r in records if r.group in names}) > 1 for names, _ in sets)
        moved = sum(split[k] != kept[k] for k in split)
        print(f"| {seed} | {len(sets)} | {parted} | {moved} |")
        first = kept if seed == 0 else first
    if not opts.compare:
        return
    with open(opts.compare, newline="") as f:
        stored = {row["image"]: row["split"] for row in csv.DictReader(f)}
    print(f"\nseed 0, links kept together, is {opts.compare}'s split: {first == stored}")
    apart = linked_apart(stored, [[records[k] for k in group] for group in links])
    print(f"links {opts.compare} parts: {len(apart)}")
    for group in apart:
        print("  " + " = ".join(group))
    twins_in_train = {
        records[k].key
        for group in links
        if any(stored[records[m].key] == "train" for m in group)
        for k in group
        if stored[records[k].key] == "test"
    }
    print(f"test eyes with a twin in train: {len(twins_in_train)} {sorted(twins_in_train)}")
    for run in opts.runs:
        with open(run / "eval-test" / "predictions.csv", newline="") as f:
            rows = list(csv.DictReader(f))
        classes = [c.removeprefix("prob_") for c in rows[0] if c.startswith("prob_")]
        print(f"{run}: test macro-AUC {macro_auc(rows, classes):.4f}, without those eyes "
              f"{macro_auc([r for r in rows if r['image'] not in twins_in_train], classes):.4f}")  # fmt: skip


def macro_auc(rows: list[dict], classes: list[str]) -> float:
    truth = np.array([classes.index(r["true"]) for r in rows])
    prob = np.array([[float(r[f"prob_{c}"]) for c in classes] for r in rows])
    return float(np.mean([roc_auc_score(truth == k, prob[:, k]) for k in range(len(classes))]))


if __name__ == "__main__":
    main()
