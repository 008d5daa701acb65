"""Contact sheet of the located optic disc (cyan) and macula (green), for a visual check of the
heuristics in eyescreen.anatomy.

    python benchmarks/landmark_check.py [OUT.png]                      # 24 images of the bundled sample
    python benchmarks/landmark_check.py OUT.png --data MANIFEST [--split SPLIT.csv] [--count 36] [--seed 0]
                                                                       # random training eyes of a data set

The counts in the README and RESULTS (disc right on 21 of 24 sample images; on 65 of 72 ODIR-5K training
eyes, seeds 0 and 1) are from looking at these sheets.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from eyescreen.anatomy import locate  # noqa: E402
from eyescreen.demo import sample_manifest  # noqa: E402
from eyescreen.preprocess import Preprocessing, preprocess_image  # noqa: E402


def sample_images() -> tuple[list[Path], int]:
    images = sorted((sample_manifest().parent / "images").glob("*.jpg"))
    return images[1:48:3] + images[0:24:3], 224  # 24 images, both eyes represented


def training_eyes(data: Path, split: Path | None, count: int, seed: int) -> tuple[list[Path], int]:
    table = split or data
    with table.open(newline="") as f:
        rows = [r for r in csv.DictReader(f) if r.get("split", "train") == "train"]
    chosen = np.random.default_rng(seed).choice(len(rows), min(count, len(rows)), replace=False)
    return [data.parent / rows[i]["image"] for i in chosen], 256


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", nargs="?", type=Path, default=Path("landmarks.png"))
    p.add_argument("--data", type=Path, help="manifest CSV (default: the bundled sample)")
    p.add_argument("--split", type=Path, help="split CSV: draw from its training eyes")
    p.add_argument("--count", type=int, default=36)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    paths, size = (
        training_eyes(args.data, args.split, args.count, args.seed) if args.data else sample_images()
    )

    columns = 8 if len(paths) <= 24 else 9
    fig, axes = plt.subplots(
        -(-len(paths) // columns), columns, figsize=(2 * columns, 2.2 * -(-len(paths) // columns))
    )
    for ax in axes.ravel():
        ax.axis("off")
    for k, (ax, path) in enumerate(zip(axes.ravel(), paths, strict=False)):
        image = preprocess_image(path, Preprocessing(size))
        marks = locate(image)
        ax.imshow(image)
        ax.set_title(f"{k}: {path.name}", fontsize=8)
        for centre, radius, colour in ((marks.disc, 0.75 * marks.disc_diameter, "cyan"),
                                       (marks.macula, marks.disc_diameter, "lime")):  # fmt: skip
            ax.add_patch(plt.Circle((centre[1], centre[0]), radius, fill=False, color=colour, lw=1.5))
    fig.tight_layout()
    fig.savefig(args.out, dpi=60)
    print(f"written {args.out}")


if __name__ == "__main__":
    main()
