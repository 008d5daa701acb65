"""The field-of-view mask and the rim erosion: scipy.ndimage (as eyescreen computed them up to commit
`9104d3c`) against OpenCV (since), in one run: are the masks the same, pixel for pixel, and how long each
takes; then the whole preprocessing of a photograph (256 px, graham) both ways, interleaved.

    python benchmarks/fov_speed.py [FOLDER] [--limit N] [--random 300]

FOLDER defaults to ODIR-5K's 256-px photographs beside the repository (all of them); `--random` adds
that many random speckled masks of random sizes (blobs, holes, ties between regions of one size).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

from eyescreen import preprocess
from eyescreen.data import list_images
from eyescreen.preprocess import Preprocessing, erode, field_of_view

ODIR = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "odir5k-256" / "images"


def scipy_field_of_view(rgb: np.ndarray) -> np.ndarray:
    """The mask as eyescreen computed it before (scipy.ndimage), kept here as the reference."""
    intensity = rgb.max(axis=2).astype(np.float32)
    threshold = max(12.0, 0.1 * float(np.percentile(intensity, 99)))
    mask = intensity > threshold
    mask = ndimage.binary_opening(mask, structure=np.ones((3, 3)), iterations=2)
    labels, n = ndimage.label(mask)
    if n == 0:
        return mask
    sizes = ndimage.sum_labels(mask, labels, index=np.arange(1, n + 1))
    mask = labels == (1 + int(np.argmax(sizes)))
    return ndimage.binary_fill_holes(mask)


def random_speckles(count: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        h, w = rng.integers(20, 200, 2)
        a = (rng.random((h, w)) < rng.uniform(0.1, 0.9)).astype(np.uint8) * rng.integers(0, 255)
        a = ndimage.zoom(a, rng.integers(1, 4), order=0)
        out.append(np.dstack([a, a // 2, a // 3]).astype(np.uint8))
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("folder", nargs="?", type=Path, default=ODIR)
    parser.add_argument("--limit", type=int)
    parser.add_argument("--random", type=int, default=300)
    args = parser.parse_args()
    paths = sorted(list_images([args.folder]))[: args.limit]
    images = [np.asarray(Image.open(p).convert("RGB")) for p in paths] + random_speckles(args.random)
    seconds = {"scipy": 0.0, "opencv": 0.0}
    differ = 0
    for rgb in images:
        start = time.perf_counter()
        old = scipy_field_of_view(rgb)
        old_rim = ndimage.binary_erosion(old, iterations=6)
        seconds["scipy"] += time.perf_counter() - start
        start = time.perf_counter()
        new = field_of_view(rgb)
        new_rim = erode(new, 6)
        seconds["opencv"] += time.perf_counter() - start
        differ += not (np.array_equal(old, new) and np.array_equal(old_rim, new_rim))
    print(f"{len(paths)} photographs from {args.folder} and {args.random} random masks: "
          f"{differ} differ, pixel for pixel")  # fmt: skip
    n = len(images)
    print(f"mask + rim erosion: scipy {seconds['scipy'] / n * 1000:.2f} ms, OpenCV "
          f"{seconds['opencv'] / n * 1000:.2f} ms an image ({seconds['scipy'] / seconds['opencv']:.2f}x)")  # fmt: skip
    prep, sample = Preprocessing(256, enhance="graham"), paths[:200]
    ways = {"scipy": (scipy_field_of_view, lambda mask, iterations: ndimage.binary_erosion(mask, iterations=iterations)),
            "opencv": (field_of_view, erode)}  # fmt: skip
    whole = {way: [] for way in ways}
    for _ in range(3):
        for way, (mask, rim) in ways.items():
            preprocess.field_of_view, preprocess.erode = mask, rim  # what preprocess_image calls
            start = time.perf_counter()
            for p in sample:
                preprocess.preprocess_image(p, prep)
            whole[way].append((time.perf_counter() - start) / len(sample) * 1000)
    preprocess.field_of_view, preprocess.erode = field_of_view, erode
    old, new = statistics.median(whole["scipy"]), statistics.median(whole["opencv"])
    print(f"whole preprocessing of {len(sample)} photographs (256 px, graham; median of 3 rounds): "
          f"scipy {old:.1f} ms, OpenCV {new:.1f} ms an image ({old / new:.2f}x)")  # fmt: skip


if __name__ == "__main__":
    main()
