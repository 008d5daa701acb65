"""Build the small real sample bundled for the demo and tests from ODIR-5K (256 px).

    python scripts/make_sample.py ../shared/datasets/odir5k-256 src/eyescreen/sample

Picks, with a fixed seed, patients whose two eyes are both labelled with one of the four study
classes: 10 with an AMD eye, 10 with a glaucoma eye, 10 with a DR eye and 10 with two normal eyes.
"""

from __future__ import annotations

import csv
import random
import shutil
import sys
from collections import defaultdict
from pathlib import Path

CLASSES = ("normal", "dr", "amd", "glaucoma")
PER_GROUP = 10


def main(src: Path, dst: Path) -> None:
    with open(src / "manifest.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    by_patient = defaultdict(list)
    for r in rows:
        by_patient[r["patient_id"]].append(r)
    complete = {
        p: eyes
        for p, eyes in by_patient.items()
        if len(eyes) == 2 and all(e["label"] in CLASSES for e in eyes)
    }
    rng = random.Random(0)
    chosen: list[str] = []
    for target in ("amd", "glaucoma", "dr", "normal"):
        if target == "normal":
            pool = [p for p, eyes in complete.items() if all(e["label"] == "normal" for e in eyes)]
        else:
            pool = [p for p, eyes in complete.items() if any(e["label"] == target for e in eyes)]
        pool = sorted(set(pool) - set(chosen), key=int)
        chosen += rng.sample(pool, PER_GROUP)
    (dst / "images").mkdir(parents=True, exist_ok=True)
    with open(dst / "manifest.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image", "patient_id", "eye", "label"])
        for p in sorted(chosen, key=int):
            for e in sorted(complete[p], key=lambda e: e["eye"]):
                shutil.copyfile(src / e["image"], dst / e["image"])
                w.writerow([e["image"], p, e["eye"], e["label"]])


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
