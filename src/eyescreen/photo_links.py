"""Photographs that must stay on one side of a split: copies of one photograph (near_duplicates) and
photographs of one eye taken again (same_eye), whatever patient ids the data gives them."""

from __future__ import annotations

from itertools import pairwise

from .components import groups
from .near_duplicates import copies_among
from .same_eye import same_eye_pairs


def linked(paths: list, cache_dir=None, progress: bool = False, sides: list | None = None) -> list[list[int]]:
    """Groups (two or more) of indices into `paths` joined by a copy or by one eye (`sides`: each
    photograph's eye where known, so that a left and a right eye are not taken for one), in index order."""
    pairs = [(a, b, 0.0) for group in copies_among(paths, progress) for a, b in pairwise(group)]
    pairs += same_eye_pairs(paths, cache_dir, progress, sides=sides)
    return groups(len(paths), pairs)


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
