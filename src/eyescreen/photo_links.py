"""Photographs that must stay on one side of a split: copies of one photograph (near_duplicates) and
photographs of one eye taken again (same_eye), whatever patient ids the data gives them."""

from __future__ import annotations

from functools import partial
from itertools import pairwise

import numpy as np
from tqdm import tqdm

from .components import groups
from .near_duplicates import copies_in, thumbnail
from .preprocess import MASK_SIDE, ImageCache, ImageError, decode_image, read_all, read_file
from .same_eye import descriptor, descriptor_cache, pairs_among, stacked


def linked(paths: list, cache_dir=None, progress: bool = False, sides: list | None = None) -> list[list[int]]:
    """Groups (two or more) of indices into `paths` joined by a copy or by one eye (`sides`: each
    photograph's eye where known, so that a left and a right eye are not taken for one), in index order.
    Each file is read once for both searches. Files that cannot be read are left out: whoever reads them
    next names them."""
    thumbs, greens = {}, {}
    looks = read_all(partial(_look, cache=descriptor_cache(cache_dir)), paths)  # on threads, in order
    for k, (look, _) in enumerate(tqdm(looks, total=len(paths), desc="looking for copies and eyes taken again",
                                       disable=not progress)):  # fmt: skip
        if look is not None:
            thumbs[k], green = look
            if green is not None:
                greens[k] = green
    pairs = [(a, b, 0.0) for group in copies_in(thumbs) for a, b in pairwise(group)]
    pairs += pairs_among(*stacked(greens), sides=sides)
    return groups(len(paths), pairs)


def _look(path, cache: ImageCache) -> tuple[np.ndarray, np.ndarray | None]:
    """A file's thumbnail (near_duplicates) and same-eye descriptor (None: no fundus to compare), from
    one reading of it."""
    data = read_file(path)
    thumb = thumbnail(decode_image(data, path, at_least=MASK_SIDE))
    try:
        return thumb, descriptor(cache, path, data)
    except ImageError:  # decodes, but no field of view: still a photograph that may be copied
        return thumb, None


def without_links_to(
    paths: list, others: list, cache_dir=None, progress: bool = False, sides: list | None = None
) -> tuple[list, list]:
    """`paths` but those holding one of `others`' photographs or eyes (a copy, or the eye photographed
    again, under another name or id), and the ones left out. `sides`: of `paths` then `others`."""
    n = len(paths)
    dropped = sorted({k for group in linked(list(paths) + list(others), cache_dir, progress, sides)
                      if group[-1] >= n for k in group if k < n})  # fmt: skip
    gone = set(dropped)
    return [p for k, p in enumerate(paths) if k not in gone], [paths[k] for k in dropped]
