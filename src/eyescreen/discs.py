"""Where the optic disc is in each training image, for crops drawn to hold it (`train --crop-on-disc`).

The disc is found by the heuristic the explanation checks use (`anatomy.locate`), on the colour image
at the training size (the enhanced image the model sees has lost the disc's brightness). Locating takes
~50 ms an image (done on threads, `read_all`), so positions are cached on disk beside the preprocessed
images, keyed the same way.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .anatomy import LOCATOR_VERSION, locate
from .preprocess import ImageCache, ImageError, Preprocessing, preprocess_image, read_all


class DiscCache(ImageCache):
    """Caches [row, col, diameter] of the disc in pixels of the `image_size` square; NaN if not found."""

    kind = f"disc-v{LOCATOR_VERSION}"

    def compute(self, path: Path, data: bytes) -> np.ndarray:
        try:
            landmarks = locate(preprocess_image(path, self.prep, data=data))
        except ValueError:  # no field of view: the crop falls back to anywhere
            return np.full(3, np.nan, dtype=np.float32)
        return np.array([*landmarks.disc, landmarks.disc_diameter], dtype=np.float32)


def locate_discs(paths, image_size: int, cache_dir=None, progress: bool = False) -> torch.Tensor:
    """Disc [row, col, diameter] per image (N, 3), in pixels of the image_size square the model sees."""
    from tqdm import tqdm

    cache = DiscCache(Preprocessing(image_size=image_size, enhance="none"), cache_dir)
    rows = []
    for row, error in tqdm(read_all(cache.get, paths), total=len(paths), desc="locating optic discs",
                           disable=not progress, leave=False):  # fmt: skip  # on threads
        if error is not None:
            raise ImageError(error)
        rows.append(row)
    return torch.from_numpy(np.stack(rows)) if rows else torch.empty((0, 3))
