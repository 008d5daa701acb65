"""Fundus field-of-view crop, square padding, resize, normalisation, and the cached uint8 store.

Every image goes through the same steps at training and at prediction time:
EXIF orientation -> RGB -> find the bright field of view against the dark border -> crop to it ->
pad to a square -> resize. The result is kept as uint8 (H, W, 3) on disk, keyed by the file's content
and the preprocessing parameters, so later epochs and later runs never decode a JPEG again. A large JPEG
is decoded only as large as the model needs, and many files are read on threads (`read_all`).
"""

from __future__ import annotations

import hashlib
import io
import itertools
import json
import os
import tempfile
import threading
import warnings
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

PREPROCESS_VERSION = 1
# Default normalisation (ImageNet statistics): only a fixed, documented convention, stored in every
# checkpoint so prediction always matches training. No pretrained weights are involved.
DEFAULT_MEAN = (0.485, 0.456, 0.406)
DEFAULT_STD = (0.229, 0.224, 0.225)
MIN_FIELD_FRACTION = 0.05  # below this share of bright pixels there is no usable fundus
MIN_SIDE = 32  # pixels: smaller images carry no usable retinal detail
MASK_SIDE = 512  # the field of view is found on a copy at most this large
# A large JPEG is decoded at no less than this many times the model's input side: room for a field of view
# that fills only part of the frame. The result is a full decode's to a level or so, or shifted by under a
# pixel where the field of view's edge falls a pixel apart (benchmarks/decode_speed.py).
DECODE_MARGIN = 4
# Blue below this share of the brighter of red and green: a two-laser (red/green) composite's empty blue
# channel. Some dark colour fundus photographs are as blue-poor (5% of ODIR-5K's) and are spared the checks
# too, which costs little: photographs of anything but a fundus (greyscale included) rarely lack blue so.
TWO_LASER_BLUE = 0.05
GREY_LEVELS = 3.0  # mean difference between neighbouring channels (of 255) under which a photograph is grey


class ImageError(ValueError):
    """An image that cannot be used; the message names the file and the problem."""


ENHANCEMENTS = ("none", "clahe", "graham")


@dataclass(frozen=True)
class Preprocessing:
    image_size: int = 224
    version: int = PREPROCESS_VERSION
    enhance: str = "none"  # none | clahe (green channel) | graham (minus a blurred copy)

    def __post_init__(self):
        if self.enhance not in ENHANCEMENTS:
            raise ValueError(f"enhance={self.enhance!r}: choose one of {', '.join(ENHANCEMENTS)}")

    def key(self) -> str:
        values = asdict(self)
        if values["enhance"] == "none":
            del values["enhance"]  # same key as before the option existed: caches stay valid
        return json.dumps(values, sort_keys=True)


_OPENING = threading.Lock()
# np.load parses a .npy header with ast.literal_eval, and in CPython 3.11 the AST builder's recursion
# counter is shared by all threads: a garbage collection that runs Python code mid-parse lets another
# thread in, and np.load fails with "SystemError: AST constructor recursion depth mismatch" (CPython
# gh-106905; seen here in a test). Cached images are small, so reading them one at a time costs little.
_NPY_LOAD = threading.Lock()


def read_image(path: str | Path, at_least: int | None = None) -> Image.Image:
    """Open an image with Pillow, apply its EXIF orientation and return it as 8-bit RGB.

    `at_least`: a JPEG may be decoded at 1/2, 1/4 or 1/8 of its size (libjpeg's DCT scaling: a camera's
    12-megapixel photograph decodes several times faster) as long as both sides keep this many pixels."""
    path = Path(path)
    return decode_image(read_file(path), path, at_least)


def read_file(path: str | Path) -> bytes:
    """The bytes of an image file, read once (check-data hashes and decodes the same bytes), or an
    ImageError naming the file."""
    path = Path(path)
    must_exist(path)
    try:
        data = path.read_bytes()
    except OSError as e:  # no permission, a network share gone away
        raise ImageError(f"{path}: cannot read file ({e.strerror or e})") from None
    if not data:
        raise ImageError(f"{path}: empty file (0 bytes)")
    return data


def must_exist(path: Path) -> None:
    """An ImageError unless `path` is a file: not found, or a link whose target is gone (a data folder
    moved from under its links)."""
    if path.is_file():
        return
    if path.is_symlink() and not path.exists():
        raise ImageError(f"{path}: broken link (to {os.readlink(path)}, which does not exist)")
    raise ImageError(f"{path}: file not found")


def decode_image(data: bytes, source: str | Path, at_least: int | None = None) -> Image.Image:
    """`read_image` on a file's bytes; `source` names the file in errors."""
    if _is_dicom(data):
        return _read_dicom(data, source)
    try:
        # Pillow checks the size as it opens the file, before decoding; catch_warnings changes
        # process-wide state, so threads reading images (load_stack) take turns for the opening only.
        with _OPENING, warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            opened = Image.open(io.BytesIO(data))
        with opened as im:
            if at_least and im.format == "JPEG":
                im.draft(im.mode, (at_least, at_least))
            im.load()
            im = ImageOps.exif_transpose(im)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageError(f"{source}: image too large to decode safely ({e})") from None
    except UnidentifiedImageError:
        raise ImageError(f"{source}: not a readable image (unknown or unsupported format)") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise ImageError(f"{source}: cannot decode image ({e})") from None
    return _to_rgb(im)


def stored_size(image: str | Path | bytes) -> tuple[int, int]:
    """(width, height) of an image file (its path or its bytes) as `read_image` reads it whole (EXIF
    orientation applied), from its header alone. For a file `read_image` has read: it does not check the
    file again."""
    if isinstance(image, bytes):
        dicom, opened = _is_dicom(image), io.BytesIO(image)
    else:
        with open(image, "rb") as f:
            dicom, opened = _is_dicom(f.read(132)), image
    if dicom:
        import pydicom

        ds = pydicom.dcmread(opened, stop_before_pixels=True)
        return int(ds.Columns), int(ds.Rows)
    with Image.open(opened) as im:
        width, height = im.size
        orientation = im.getexif().get(ExifTags.Base.Orientation, 1)
    return (height, width) if orientation in (5, 6, 7, 8) else (width, height)  # turned by 90 degrees


def _is_dicom(head: bytes) -> bool:
    return head[128:132] == b"DICM"


def _read_dicom(data: bytes, source: str | Path) -> Image.Image:
    """Ophthalmic photography stored as DICOM, read with pydicom (colour or monochrome, one frame)."""
    try:
        import pydicom
    except ImportError:
        raise ImageError(
            f"{source}: DICOM file, but pydicom is not installed (pip install pydicom)"
        ) from None
    try:
        ds = pydicom.dcmread(io.BytesIO(data))
    except Exception as e:  # pydicom raises many types for damaged files
        raise ImageError(f"{source}: cannot read DICOM ({e})") from None
    if "PixelData" not in ds:
        raise ImageError(f"{source}: DICOM without pixel data (no image in this file)")
    try:
        pixels = ds.pixel_array
    except Exception as e:  # e.g. a compressed transfer syntax without a decoder installed
        raise ImageError(f"{source}: cannot decode DICOM pixel data ({e})") from None
    if getattr(ds, "NumberOfFrames", 1) not in (None, 1) and pixels.ndim >= 3 and pixels.shape[0] > 1:
        pixels = pixels[0]  # a multi-frame series: the first frame
    if ds.get("PhotometricInterpretation", "").startswith("YBR"):
        from pydicom.pixels import convert_color_space

        pixels = convert_color_space(pixels, ds.PhotometricInterpretation, "RGB")
    if pixels.dtype != np.uint8:
        pixels = pixels.astype(np.float64)
        pixels = (pixels - pixels.min()) / max(pixels.max() - pixels.min(), 1e-9) * 255.0
    return _to_rgb(Image.fromarray(pixels.astype(np.uint8)))


def _to_rgb(im: Image.Image) -> Image.Image:
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):  # 16/32-bit greyscale: rescale, don't clip
        a = np.asarray(im, dtype=np.float64)
        a = (a - a.min()) / max(a.max() - a.min(), 1e-9) * 255.0
        im = Image.fromarray(a.astype(np.uint8))
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        im = im.convert("RGBA")
        background = Image.new("RGBA", im.size, (0, 0, 0, 255))  # transparent means outside the fundus
        im = Image.alpha_composite(background, im)
    return im.convert("RGB")


def field_of_view(rgb: np.ndarray) -> np.ndarray:
    """Boolean mask of the fundus: the largest bright connected region against the dark border.

    Works for circular colour-fundus photos and for wide-field frames whose edges are partly
    occluded (eyelids, lashes): both are a bright region surrounded, at least partly, by dark pixels.
    """
    import cv2

    # OpenCV's morphology and labelling give scipy.ndimage's masks exactly (checked on every ODIR-5K
    # photograph and on random masks, benchmarks/fov_speed.py) in half the time; pixels beyond the
    # frame count as dark (scipy's border_value=0), and regions are 4-connected (scipy's default).
    intensity = rgb.max(axis=2)
    threshold = max(12.0, 0.1 * float(np.percentile(intensity, 99)))
    mask = (intensity > threshold).astype(np.uint8)
    mask = cv2.morphologyEx(mask, cv2.MORPH_OPEN, np.ones((3, 3), np.uint8), iterations=2,
                            borderType=cv2.BORDER_CONSTANT, borderValue=0)  # fmt: skip  # drop text and noise
    n, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=4)
    if n == 1:
        return mask.astype(bool)
    return _fill_holes(labels == 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA])))


def _fill_holes(mask: np.ndarray) -> np.ndarray:
    """The mask with every dark region that does not reach the frame's edge filled (4-connected)."""
    import cv2

    _, labels = cv2.connectedComponents((~mask).astype(np.uint8), connectivity=4)
    edge = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    return mask | ~np.isin(labels, edge)


def erode(mask: np.ndarray, iterations: int) -> np.ndarray:
    """scipy.ndimage.binary_erosion(mask, iterations=...) (a 3x3 cross, dark beyond the frame), by OpenCV."""
    import cv2

    cross = cv2.getStructuringElement(cv2.MORPH_CROSS, (3, 3))
    out = cv2.erode(mask.astype(np.uint8), cross, iterations=iterations, borderType=cv2.BORDER_CONSTANT,
                    borderValue=0)  # fmt: skip
    return out.astype(bool)


def crop_to_field(
    im: Image.Image, source: str | Path = "image", notes: list[str] | None = None
) -> Image.Image:
    """Crop to the field of view's bounding box and pad to a centred square with black. A warning that
    the photograph is unlikely to show a fundus is appended to `notes` when given."""
    if min(im.size) < MIN_SIDE:
        raise ImageError(
            f"{source}: image too small ({im.width}x{im.height}; need at least {MIN_SIDE} px a side)"
        )
    small = im.copy()
    small.thumbnail((MASK_SIDE, MASK_SIDE))  # find the mask on a small copy: same box, a fraction of the work
    pixels = np.asarray(small)
    mask = field_of_view(pixels)
    if mask.mean() < MIN_FIELD_FRACTION:
        raise ImageError(f"{source}: no fundus field of view found (image is almost entirely dark)")
    if notes is not None:
        if doubt := fundus_doubt(pixels, mask):
            notes.append(f"{source}: may not be a fundus photograph ({doubt}); check the file")
        elif is_greyscale(pixels, mask):
            notes.append(
                f"{source}: greyscale, not a colour photograph (red-free, angiogram?): unless the model was "
                "trained on such photographs, its output means little"
            )
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    sx, sy = im.width / small.width, im.height / small.height
    box = (
        int(cols[0] * sx),
        int(rows[0] * sy),
        min(im.width, int(np.ceil((cols[-1] + 1) * sx))),
        min(im.height, int(np.ceil((rows[-1] + 1) * sy))),
    )
    im = im.crop(box)
    side = max(im.size)
    square = Image.new("RGB", (side, side), (0, 0, 0))
    square.paste(im, ((side - im.width) // 2, (side - im.height) // 2))
    return square


def fundus_doubt(rgb: np.ndarray, mask: np.ndarray) -> str | None:
    """Why `rgb` (with its field-of-view mask) is unlikely to be a fundus photograph, or None.

    A heuristic, so it only warns: colour fundus photographs are red-orange inside the field of view
    (red-free and greyscale ones are grey, which passes: `crop_to_field` notes them apart), and the field
    of view is framed by a dark border at least at the corners (wide-field frames too). Everyday
    photographs usually fail one.
    Ultra-widefield scanning-laser composites (Optos and the like: a red and a green laser, no blue)
    are often green-dominant and fill their frame with lids and lashes: neither check applies to them.
    """
    inside = rgb[mask].astype(np.float32)
    r, g, b = inside.mean(axis=0)
    if b < TWO_LASER_BLUE * max(r, g):
        return None
    if max(g, b) > 1.2 * r and max(g, b) - r > 12:
        return "colours are not those of a retina: green or blue dominate"
    corners = np.concatenate(
        [m.ravel() for m in (mask[:8, :8], mask[:8, -8:], mask[-8:, :8], mask[-8:, -8:])]
    )
    if corners.mean() > 0.9:
        return "no dark border around the field of view"
    return None


def is_greyscale(rgb: np.ndarray, mask: np.ndarray) -> bool:
    """Whether the field of view is grey: a red-free photograph, an angiogram or an autofluorescence image
    (JPEG leaves its channels a level or two apart, a colour fundus tens of levels)."""
    inside = rgb[mask].astype(np.int16)
    return float(np.abs(np.diff(inside, axis=1)).mean()) < GREY_LEVELS


def preprocess_image(
    path: str | Path, prep: Preprocessing, notes: list[str] | None = None, data: bytes | None = None
) -> np.ndarray:
    """File -> uint8 array (image_size, image_size, 3), ready to cache. `data`: the file's bytes where
    the caller has read them already (the cache hashes them for its key)."""
    return enhance(cropped_fundus(path, prep.image_size, notes, data), prep.enhance)


def preprocess_noted(path: str | Path, prep: Preprocessing) -> tuple[np.ndarray, list[str]]:
    """`preprocess_image` and the warnings it noted about the file (may not be a colour fundus)."""
    notes: list[str] = []
    return preprocess_image(path, prep, notes), notes


def cropped_fundus(
    path: str | Path, image_size: int, notes: list[str] | None = None, data: bytes | None = None
) -> np.ndarray:
    """File (or its bytes, `data`) -> the fundus cropped, squared and resized, before enhancement: what a
    person should see beside a heatmap (an enhanced image is what the model sees, not what a clinician
    reads)."""
    data = read_file(path) if data is None else data
    im = crop_to_field(decode_image(data, path, at_least=DECODE_MARGIN * image_size), path, notes)
    im = im.resize((image_size, image_size), Image.Resampling.BICUBIC)
    return np.asarray(im, dtype=np.uint8).copy()


def enhance(rgb: np.ndarray, method: str) -> np.ndarray:
    """Structure-aware contrast: CLAHE on the green channel (vessels and lesions are most visible there)
    or Graham's background subtraction (4 * (image - Gaussian blur) + 128, inside the field of view)."""
    if method == "none":
        return rgb
    import cv2

    if method == "clahe":
        out = rgb.copy()
        tiles = max(2, rgb.shape[0] // 28)
        out[..., 1] = cv2.createCLAHE(clipLimit=2.0, tileGridSize=(tiles, tiles)).apply(
            np.ascontiguousarray(rgb[..., 1])
        )
        return out
    mask = field_of_view(rgb)
    blurred = cv2.GaussianBlur(rgb, (0, 0), sigmaX=rgb.shape[0] / 30)
    out = cv2.addWeighted(rgb, 4.0, blurred, -4.0, 128)
    mask = erode(mask, iterations=max(1, rgb.shape[0] // 40))  # drop the rim's halo
    out[~mask] = 0
    return out


def default_cache_dir() -> Path:
    return Path(os.environ.get("EYESCREEN_CACHE", Path.home() / ".cache" / "eyescreen"))


class ImageCache:
    """On-disk store of preprocessed uint8 images keyed by file content + preprocessing parameters."""

    kind = ""  # what is cached for an image: "" = the preprocessed image; subclasses store other arrays

    def __init__(self, prep: Preprocessing, cache_dir: str | Path | None = None):
        self.prep = prep
        self.root = Path(cache_dir) if cache_dir else default_cache_dir()

    def key(self, data: bytes) -> str:
        """Of a file's bytes and the parameters: a file edited in place, or other parameters, miss."""
        h = hashlib.sha256(self.prep.key().encode() + self.kind.encode())
        h.update(data)
        return h.hexdigest()[:32]

    def compute(self, path: Path, data: bytes) -> np.ndarray:
        return preprocess_image(path, self.prep, data=data)

    def get(self, path: str | Path, data: bytes | None = None) -> np.ndarray:
        """The array for `path`; `data`, its bytes where the caller has read them already (read once)."""
        path = Path(path)
        if data is None:
            data = read_file(path)  # read once: hashed for the key, and decoded from memory on a miss
        key = self.key(data)
        cached = self.root / key[:2] / f"{key}.npy"
        if cached.is_file():
            try:
                with _NPY_LOAD:
                    return np.load(cached, allow_pickle=False)
            except (OSError, ValueError):
                pass  # a damaged cache entry is rebuilt below
        array = self.compute(path, data)
        cached.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=cached.parent, suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            np.save(f, array, allow_pickle=False)
        os.replace(tmp, cached)  # atomic: readers never see half a file
        return array


def default_workers() -> int:
    """Threads for work that releases the GIL (Pillow, OpenCV): as many as torch computes with, at most 8."""
    return min(8, torch.get_num_threads())


def read_all(read, paths: list, workers: int | None = None) -> Iterator[tuple[object, str | None]]:
    """`read(path)` for each path on `workers` threads (default: as many as torch computes with, at most 8:
    OMP_NUM_THREADS limits both), in order: (what it returned, None), or (None, the message) for a file it
    refused with ImageError. Pillow's decoding and
    resizing and OpenCV let other threads run meanwhile (benchmarks/cache_speed.py). Leaving early (an
    error, Ctrl-C) cancels the reads still queued."""

    def attempt(path):
        try:
            return read(path), None
        except ImageError as e:
            return None, str(e)

    pool = ThreadPoolExecutor(workers or default_workers())
    try:
        yield from pool.map(attempt, paths)
    finally:
        pool.shutdown(cancel_futures=True)


def load_stack(
    paths: list[Path],
    cache: ImageCache,
    progress: bool = True,
    desc: str = "images",
    workers: int | None = None,
):
    """Preprocess (or read from cache) many images into one uint8 tensor (N, 3, H, W), in order, on
    threads (`read_all`): the first reading of a dataset, before the cache holds it, is the slow one.

    Unreadable files do not stop the batch: they are returned as (index, message) pairs.
    """
    from tqdm import tqdm

    size = cache.prep.image_size
    out = torch.empty((len(paths), 3, size, size), dtype=torch.uint8)
    ok, errors = [], []
    results = read_all(cache.get, paths, workers)
    for i, (array, error) in enumerate(
        tqdm(results, total=len(paths), desc=f"preparing {desc}", disable=not progress, leave=False)
    ):
        if error is None:
            out[len(ok)] = torch.from_numpy(array).permute(2, 0, 1)
            ok.append(i)
        else:
            errors.append((i, error))
    return out[: len(ok)], ok, errors


@dataclass
class Views:
    """Each patient's photographs as views of both eyes (`load_views`): every right-left combination of
    the photographs read, one view for a patient with at most one photograph of each side. Each photograph
    is held once (`photos`); a view points at its two (`index`)."""

    photos: torch.Tensor  # uint8 [U, 3, S, S]: each photograph read, once
    index: torch.Tensor  # long [V, 2]: each view's right and left photograph in `photos`, -1 where none
    owner: np.ndarray  # [V]: the patient of each view
    paths: list[tuple]  # [V]: (right path | None, left path | None)
    notes: list[list[str]]  # per patient: the warnings of its photographs
    errors: list[list[tuple]]  # per patient: (path, message) of each photograph that could not be read

    @property
    def mask(self) -> torch.Tensor:
        """bool [V, 2]: the view has that eye."""
        return self.index >= 0

    @property
    def images(self) -> torch.Tensor:
        """uint8 [V, 2, 3, S, S], right then left, zeros for an absent eye."""
        if not len(self.photos):  # none read: nothing to gather from
            return torch.zeros((len(self.index), 2, *self.photos.shape[1:]), dtype=torch.uint8)
        images = self.photos[self.index.clamp(min=0)]
        images[~self.mask] = 0
        return images

    def select(self, keep) -> Views:
        """The views `keep` (a boolean mask) picks; the photographs and the per-patient lists as they are."""
        paths = [path for path, k in zip(self.paths, keep.tolist(), strict=True) if k] if self.paths else []
        return Views(self.photos, self.index[keep], self.owner[keep.numpy()], paths, self.notes, self.errors)


def load_views(patients: list[tuple], read, size: int) -> Views:
    """Both eyes of each patient (right, left: each a path, None, or several paths of one eye) on threads
    (`read_all`), each photograph read once; `read(path) -> (image, warnings)`. A photograph that cannot be
    read leaves the views: a patient with none read has one view with no eye in it."""
    sides = [tuple(_photographs(side) for side in eyes) for eyes in patients]
    unique = list(dict.fromkeys(path for eyes in sides for photos in eyes for path in photos))
    found = dict(zip(unique, read_all(read, unique), strict=True))
    readable = [path for path in unique if found[path][1] is None]
    position = {path: k for k, path in enumerate(readable)}
    photos = torch.zeros((len(readable), 3, size, size), dtype=torch.uint8)
    for k, path in enumerate(readable):
        photos[k] = torch.from_numpy(found[path][0][0]).permute(2, 0, 1)
    notes: list[list[str]] = [[] for _ in patients]
    errors: list[list[tuple]] = [[] for _ in patients]
    owner, paths = [], []
    for i, eyes in enumerate(sides):
        usable = []
        for side in eyes:
            read_here = [path for path in side if path in position]
            notes[i] += [note for path in read_here for note in found[path][0][1]]
            errors[i] += [(path, found[path][1]) for path in side if path not in position]
            usable.append(read_here or [None])
        views = list(itertools.product(*usable))
        owner += [i] * len(views)
        paths += views
    index = torch.tensor([[position.get(path, -1) for path in view] for view in paths], dtype=torch.long)
    return Views(photos, index.view(-1, 2), np.array(owner, dtype=int), paths, notes, errors)


def _photographs(side) -> tuple:
    if side is None:
        return ()
    return tuple(side) if isinstance(side, list | tuple) else (side,)


def normalize(batch: torch.Tensor, mean, std) -> torch.Tensor:
    """uint8 (N, 3, H, W) -> float, normalised; the layout (channels_last or not) is preserved."""
    mean = torch.tensor(mean, device=batch.device).view(1, 3, 1, 1) * 255.0
    std = torch.tensor(std, device=batch.device).view(1, 3, 1, 1) * 255.0
    return (batch.float() - mean) / std
