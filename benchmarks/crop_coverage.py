"""How often does a random training crop hold the optic disc? (For `train --crop-size`.)

    python benchmarks/crop_coverage.py --data MANIFEST --split RUN/split.csv [--label glaucoma]
        [--image-size 256] [--crop-size 160] [--crop-on-disc 0.5] [--limit 100]

For up to `--limit` training eyes with `--label`, the disc is located with the heuristic of
`eyescreen.anatomy.locate` (the one the explanation checks and `train --crop-on-disc` use), then 1,000
crop corners are drawn as `augment.RandomCrop` draws them (a whole-pixel corner anywhere inside the image,
or around the disc for a share `--crop-on-disc`; rotation and flips left out), and the share of crops
holding the whole disc is counted per eye.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np
import torch

from eyescreen import anatomy, augment
from eyescreen.preprocess import Preprocessing, preprocess_image


def disc_inside(image: np.ndarray, crop: int, on_disc: float, draws: int = 1000) -> float:
    landmarks = anatomy.locate(image)
    row, col = landmarks.disc
    radius = landmarks.disc_diameter / 2
    size = torch.tensor(image.shape[1::-1])  # width, height, as augment orders corners (x, y)
    corner = torch.stack([torch.randint(0, int(s) - crop + 1, (draws,)) for s in size], 1)
    if on_disc:
        discs = torch.tensor([row, col, landmarks.disc_diameter]).repeat(draws, 1)
        corner = augment.RandomCrop(crop, on_disc).corner_on_disc(corner, discs, size)
    x, y = corner[:, 0].numpy(), corner[:, 1].numpy()
    holds = (
        (y <= row - radius) & (row + radius <= y + crop) & (x <= col - radius) & (col + radius <= x + crop)
    )
    return float(holds.mean())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--split", type=Path, required=True)
    p.add_argument("--label", default="glaucoma")
    p.add_argument("--image-size", type=int, default=256)
    p.add_argument("--crop-size", type=int, default=160)
    p.add_argument("--crop-on-disc", type=float, default=0.0)
    p.add_argument("--limit", type=int, default=100)
    args = p.parse_args()

    with args.split.open(newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["split"] == "train" and r["label"] == args.label]
    prep = Preprocessing(image_size=args.image_size, enhance="none")  # the disc heuristic wants colour
    torch.manual_seed(0)
    shares = np.array(
        [
            disc_inside(
                preprocess_image(args.data.parent / r["image"], prep), args.crop_size, args.crop_on_disc
            )
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
