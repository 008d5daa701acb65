"""One eye photographed again under another patient id: a follow-up visit registered as a new patient,
which puts one eye in two splits. The pixels differ (framing, exposure, years of disease), so the
thumbnails that catch copies (near_duplicates) miss it; the vessels do not change.

Each photograph becomes the green channel of its Graham-enhanced 128-px fundus (what training caches
for the default preset): vessels, lesions and the disc rim on a flat background. Candidates are each
photograph's nearest neighbours by the inner field at 12 px, sharp and blurred; each candidate pair is
then compared at full scale, the inner field of one searched for in the other over shifts of up to 1/8
of the frame, rotations of up to 8 degrees and zooms of up to 7% (normalised cross-correlation, OpenCV's
matchTemplate). Photographs with too little detail to compare (a dense cataract, a dark frame, a
camera's reflection alone) are left out: they look alike to any comparison; the edge of a field of view
cut short, which two dull photographs dark in the same place share, is not detail. Nor are a left and a
right eye compared. On ODIR-5K the 14 pairs at 0.85 or more are, by eye, one eye each
(benchmarks/split_links.py). Of real photographs "photographed again" by a simulation the search finds
three in four after a mild or moderate change, more than half after a strong one
(benchmarks/same_eye_recall.py; RESULTS "The same eye photographed again, under two patient ids").
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from functools import partial

import cv2
import numpy as np
from tqdm import tqdm

from .eye_names import SIDES
from .preprocess import ImageCache, Preprocessing, default_workers, read_all

SIDE = 128  # the comparison's frame: the default preset's cached images
LIMIT = 0.85  # normalised cross-correlation at which two photographs are taken for one eye
DETAIL = 12  # grey levels from the flat background of a Graham-enhanced image that count as detail
EDGE = 6  # px from the edge of the field of view where Graham's enhancement leaves a halo, not detail
MIN_DETAIL = 0.15  # the share of the inner field in detail under which a photograph is not compared
NEIGHBOURS = 3  # candidates per photograph in each view of the shortlist
SHORTLIST_BLURS = (0, 6)  # px (Gaussian sigma) before the 12-px views: the sharp one ranks a photograph taken
# again under the same framing first, the blurred one keeps one turned, shifted or zoomed near its original
COARSE_ANGLES = (-8, -4, 0, 4, 8)  # degrees
FINE_STEP = 2  # degrees either side of the best coarse angle
SCALES = (0.93, 0.965, 1.035, 1.07)  # zooms tried at the best angle: another framing of the same eye
ZOOM_FROM = 0.5  # the score turned at which zooms are tried: 9 candidate pairs in 10 score less; simulated
# copies found only by zooming scored 0.56 or more unzoomed (RESULTS "The same eye photographed again")
CHUNK = 1024  # rows of the candidate search at a time


def descriptor_cache(cache_dir=None) -> ImageCache:
    """Where the comparison's images are kept: the default preset's cached images, shared with training."""
    return ImageCache(Preprocessing(image_size=SIDE, enhance="graham"), cache_dir)


def descriptor(cache: ImageCache, path, data: bytes | None = None) -> np.ndarray:
    """uint8 [SIDE, SIDE]: one photograph's Graham-enhanced green channel (`data`: its bytes, if read)."""
    return np.ascontiguousarray(cache.get(path, data)[:, :, 1])  # the cache holds [SIDE, SIDE, 3]


def descriptors(paths: list, cache_dir=None, progress: bool = False) -> tuple[np.ndarray, list[int]]:
    """uint8 [N, SIDE, SIDE]: the Graham-enhanced green channel of each readable photograph, and the
    indices into `paths` they belong to (unreadable files are left out: whoever reads them next names them)."""
    paths = list(paths)
    read = read_all(partial(descriptor, descriptor_cache(cache_dir)), paths)  # on threads, in order
    greens = {k: green for k, (green, _) in enumerate(tqdm(read, total=len(paths), desc="eyes to compare",
                                                           disable=not progress, leave=False))
              if green is not None}  # fmt: skip
    return stacked(greens)


def stacked(greens: dict[int, np.ndarray]) -> tuple[np.ndarray, list[int]]:
    """Descriptors by index (into a list of photographs) as `pairs_among` takes them: uint8 [N, SIDE, SIDE]
    and the indices, in order."""
    ok = sorted(greens)
    return (np.stack([greens[k] for k in ok]) if ok else np.zeros((0, SIDE, SIDE), np.uint8)), ok


def _inner(images: np.ndarray) -> np.ndarray:
    m = int(0.22 * images.shape[-1])  # the square inside the field of view, clear of its rim
    return images[..., m:-m, m:-m]


def detail(images: np.ndarray) -> np.ndarray:
    """[N]: the share of each inner field that stands out from the flat background (vessels, lesions, the
    disc). A lone reflection or a shadow of the camera, which sits in the same place on every photograph
    it spoils, is too little to compare by; so is the edge of a field of view cut short (0 outside the
    field after Graham's enhancement), which two dull photographs dark in the same place would share."""
    return np.array([_detail(inner) for inner in _inner(images)], dtype=np.float64)


def _detail(inner: np.ndarray) -> float:
    standing_out = np.abs(inner.astype(np.int16) - 128) > DETAIL
    return float((standing_out & ~_near_edge(inner)).mean())


def _near_edge(inner: np.ndarray) -> np.ndarray:
    """Bool, the shape of `inner`: outside the field of view (0 after Graham's enhancement, in a region wider
    than a vessel, which can be 0 too) or within EDGE px of it."""
    dark = (inner == 0).astype(np.uint8)
    outside = cv2.morphologyEx(dark, cv2.MORPH_OPEN, np.ones((7, 7), np.uint8))  # 7 px: wider than a vessel
    return cv2.dilate(outside, np.ones((2 * EDGE + 1, 2 * EDGE + 1), np.uint8)).astype(bool)


def candidates(images: np.ndarray, neighbours: int = NEIGHBOURS) -> list[tuple[int, int]]:
    """Pairs i < j where j is among i's `neighbours` nearest by the inner field at 12 px, sharp or blurred
    (SHORTLIST_BLURS), or i among j's."""
    found: set[tuple[int, int]] = set()
    for blur in SHORTLIST_BLURS:
        found |= _nearest(_shortlist_view(images, blur), neighbours)
    return sorted(found)


def _shortlist_view(images: np.ndarray, blur: float) -> np.ndarray:
    """[N, 144]: each inner field, blurred by `blur` px, at 12 px, centred and of unit length."""
    inner = (cv2.GaussianBlur(x, (0, 0), blur) if blur else x for x in _inner(images))
    small = np.stack([cv2.resize(x, (12, 12), interpolation=cv2.INTER_AREA) for x in inner])
    small = small.reshape(len(small), -1).astype(np.float32)
    small -= small.mean(1, keepdims=True)
    return small / (np.linalg.norm(small, axis=1, keepdims=True) + 1e-6)


def _nearest(small: np.ndarray, neighbours: int) -> set[tuple[int, int]]:
    k = min(neighbours, len(small) - 1)
    found: set[tuple[int, int]] = set()
    if k < 1:
        return found
    for start in range(0, len(small), CHUNK):
        near = small[start : start + CHUNK] @ small.T
        rows = np.arange(len(near))
        near[rows, start + rows] = -np.inf
        nearest = np.argpartition(-near, k - 1, axis=1)[:, :k]
        for i, row in zip(start + rows, nearest, strict=True):
            found.update((min(i, int(j)), max(i, int(j))) for j in row)
    return found


def similarity(a: np.ndarray, b: np.ndarray) -> float:
    """The best normalised cross-correlation of `a`'s inner field inside `b`, shifted, turned and zoomed:
    every 4 degrees first, then 2 degrees either side of the best (7 turns instead of 9 and one direction
    instead of both: 2.5 times faster, the same pairs found on ODIR-5K), then the zooms of SCALES at the
    best turn, for a pair that scores ZOOM_FROM or more turned."""
    scores = {angle: _match(a, b, angle) for angle in COARSE_ANGLES}
    best = max(scores, key=scores.get)
    for angle in (best - FINE_STEP, best + FINE_STEP):
        scores[angle] = _match(a, b, angle)
    best = max(scores, key=scores.get)
    if scores[best] < ZOOM_FROM:
        return scores[best]
    return max(scores[best], *(_match(a, b, best, scale) for scale in SCALES))


def _match(a: np.ndarray, b: np.ndarray, angle: float, scale: float = 1.0) -> float:
    side = b.shape[-1]
    margin = side // 8
    turn = cv2.getRotationMatrix2D((side / 2, side / 2), angle, scale)
    window = cv2.warpAffine(b, turn, (side, side), borderMode=cv2.BORDER_REFLECT)[
        margin:-margin, margin:-margin
    ]
    return float(cv2.matchTemplate(window, _inner(a), cv2.TM_CCOEFF_NORMED).max())


def same_eye_pairs(
    paths: list, cache_dir=None, progress: bool = False, limit: float = LIMIT, sides: list | None = None
) -> list[tuple[int, int, float]]:
    """(i, j, similarity) for the pairs of `paths` (i < j) taken for one eye: `limit` or more, both
    photographs with enough detail to compare, and not a left and a right eye (`sides`, as the data
    names them: left/right/OS/OD/..., or None where unknown)."""
    images, ok = descriptors(paths, cache_dir, progress)
    return pairs_among(images, ok, limit, sides)


def pairs_among(
    images: np.ndarray, ok: list[int], limit: float = LIMIT, sides: list | None = None
) -> list[tuple[int, int, float]]:
    """same_eye_pairs on descriptors already made: `images[k]` is the photograph at index `ok[k]`, and
    `sides` (if given) has one entry per index."""
    if len(images) < 2:
        return []
    structured = detail(images) >= MIN_DETAIL
    side = [SIDES.get(str(s).lower()) for s in sides] if sides else [None] * (max(ok) + 1)

    def comparable(i: int, j: int) -> bool:
        a, b = side[ok[i]], side[ok[j]]
        return bool(structured[i] and structured[j]) and (a is None or b is None or a == b)

    pairs = [pair for pair in candidates(images) if comparable(*pair)]
    with ThreadPoolExecutor(default_workers()) as pool:  # OpenCV lets other threads run
        scores = list(pool.map(lambda pair: similarity(images[pair[0]], images[pair[1]]), pairs))
    return [(ok[i], ok[j], score) for (i, j), score in zip(pairs, scores, strict=True) if score >= limit]
