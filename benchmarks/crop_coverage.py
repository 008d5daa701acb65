"""How often does a random training crop hold the optic disc? (For `train --crop-size`.)

    python benchmarks/crop_coverage.py --data MANIFEST --split RUN/split.csv [--label glaucoma]
        [--image-size 256] [--crop-size 160] [--limit 100]

For up to `--limit` training eyes with `--label`, the disc is located with the heuristic of
`eyescreen.anatomy.locate` (the one the explanation checks use), then 1,000 crop corners are drawn as
`augment.RandomCrop` draws them (a whole-pixel corner anywhere inside the image; rotation and flips left
out), and the share of crops holding the whole disc is counted per eye.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np

from eyescreen import anatomy
from eyescreen.preprocess import Preprocessing, preprocess_image


def disc_inside(image: np.ndarray, crop: int, rng: np.random.Generator, draws: int = 1000) -> float:
    landmarks = anatomy.locate(image)
    row, col = landmarks.disc
    radius = landmarks.disc_diameter / 2
    size = image.shape[0]
    corner = rng.integers(0, size - crop + 1, (draws, 2))
    holds = (
        (corner[:, 0] <= row - radius)
        & (row + radius <= corner[:, 0] + crop)
        & (corner[:, 1] <= col - radius)
        & (col + radius <= corner[:, 1] + crop)
    )
    return float(holds.mean())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--split", type=Path, required=True)
    p.add_argument("--label", default="glaucoma")
    p.add_argument("--image-size", type=int, default=256)
    p.add_argument("--crop-size", type=int, default=160)
    p.add_argument("--limit", type=int, default=100)
    args = p.parse_args()

    with args.split.open(newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["split"] == "train" and r["label"] == args.label]
    prep = Preprocessing(image_size=args.image_size, enhance="none")  # the disc heuristic wants colour
    rng = np.random.default_rng(0)
    shares = np.array(
        [
            disc_inside(preprocess_image(args.data.parent / r["image"], prep), args.crop_size, rng)
            for r in rows[: args.limit]
        ]
    )
    print(
        f"{len(shares)} training eyes labelled {args.label}, {args.crop_size}-px crops of {args.image_size}-px images:"
    )
    print(f"share of crops holding the whole disc: mean {shares.mean():.2f}, median {np.median(shares):.2f}; "
          f"eyes whose disc is in fewer than a quarter of their crops: {(shares < 0.25).mean():.2f}")  # fmt: skip


if __name__ == "__main__":
    main()
