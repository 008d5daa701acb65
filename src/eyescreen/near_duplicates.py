"""The same photograph saved twice: near-identical pixels under different bytes (re-encoded, resized,
exported again), which a content hash misses and which, under two patient ids, puts one eye in two splits.

Each photograph is reduced to a 16 x 16 colour thumbnail; two whose thumbnails differ by at most
`LIMIT` grey levels (root mean square) are taken for one photograph. On ODIR-5K's 5,103 photographs the
copies found this way differ by 0.05-0.11 levels and every other pair by 1.95 or more (two shots of one
eye, then different eyes from 3.8): benchmarks/resaved_check.py, RESULTS "The same photograph saved twice".
"""

from __future__ import annotations

import numpy as np
from PIL import Image
from tqdm import tqdm

from .components import groups
from .preprocess import MASK_SIDE, read_all, read_image

SIDE = 16
LIMIT = 1.0  # grey levels, root mean square over the thumbnail
CHUNK = 1024  # rows of the distance matrix at a time: memory stays at CHUNK x N


def thumbnail(im: Image.Image) -> np.ndarray:
    """uint8 [SIDE * SIDE * 3] of an RGB photograph, the whole frame."""
    return np.asarray(im.convert("RGB").resize((SIDE, SIDE), Image.BILINEAR), dtype=np.uint8).ravel()


def read_thumbnail(path) -> np.ndarray:
    """The thumbnail of a file, read as check-data reads it (decoded no larger than its field-of-view search)."""
    return thumbnail(read_image(path, at_least=MASK_SIDE))


def copies_among(paths: list, progress: bool = False) -> list[list[int]]:
    """Groups of indices into `paths` whose files hold one photograph: byte copies or re-saves. Files that
    cannot be read are left out here: whoever reads them next names them. About 0.5 ms a 256-px photograph
    on two threads (ODIR-5K's 4,035 four-class photographs: 2 s)."""
    looks = read_all(read_thumbnail, paths)
    thumbs = {k: thumb for k, (thumb, _) in enumerate(
        tqdm(looks, total=len(paths), desc="looking for copies", disable=not progress)) if thumb is not None}  # fmt: skip
    return copies_in(thumbs)


def copies_in(thumbs: dict[int, np.ndarray]) -> list[list[int]]:
    """copies_among on thumbnails already made, by index into a list of photographs."""
    kept = sorted(thumbs)
    if not kept:
        return []
    found = distances_within(np.stack([thumbs[k] for k in kept]))
    return [[kept[m] for m in group] for group in groups(len(kept), found)]


def distances_within(thumbs: np.ndarray, limit: float = LIMIT) -> list[tuple[int, int, float]]:
    """(i, j, distance) for every pair i < j whose thumbnails are within `limit` levels (RMS)."""
    x = thumbs.astype(np.float32)
    squares = (x**2).sum(1)
    found = []
    for start in range(0, len(x), CHUNK):
        block = x[start : start + CHUNK]
        d2 = squares[start : start + CHUNK, None] + squares[None, :] - 2 * block @ x.T
        rms = np.sqrt(np.maximum(d2, 0) / x.shape[1])
        for i, j in zip(*np.nonzero(rms <= limit), strict=True):
            if start + i < j:
                found.append((int(start + i), int(j), float(rms[i, j])))
    return found
