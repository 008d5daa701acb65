"""Synthetic fundus-like photographs: a bright field of view on black, an optic disc, vessels, and a
class-defining planted lesion. Deterministic for a given seed."""

from __future__ import annotations

import csv
import random
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

LESIONS = {"normal": None, "spots": "spots", "blob": "blob"}


def fundus(
    size: int = 160,
    lesion: str | None = None,
    seed: int = 0,
    wide_field: bool = False,
    offset: tuple[int, int] = (0, 0),
    lesion_at: tuple[int, int] | None = None,
    macula: bool = False,
) -> tuple[Image.Image, tuple[int, int, int, int]]:
    """Return (image, field-of-view bounding box). Circular by default; `wide_field` draws a wide
    ellipse clipped by the frame with a dark eyelid band across the bottom. `lesion_at` moves the
    'blob' or 'exudate' lesion's centre (default: left of the image centre)."""
    rng = random.Random(seed)
    w, h = (size * 3 // 2, size) if wide_field else (size, size)
    im = Image.new("RGB", (w, h), (0, 0, 0))
    d = ImageDraw.Draw(im)
    cx, cy = w // 2 + offset[0], h // 2 + offset[1]
    if wide_field:
        rx, ry = int(w * 0.48), int(h * 0.62)  # taller than the frame: top edge cut off
        box = (cx - rx, cy - ry, cx + rx, cy + ry)
    else:
        r = int(size * 0.42)
        box = (cx - r, cy - r, cx + r, cy + r)
    d.ellipse(box, fill=(170 + rng.randint(-15, 15), 80, 40))
    if wide_field:
        d.rectangle((0, int(h * 0.85), w, h), fill=(8, 6, 5))  # eyelid occluding the lower edge
    disc = (cx + int(0.18 * w), cy - 4)
    wiggle = random.Random(seed * 7919 + 1)  # the bends: its own generator, so lesions stay where they were
    for _ in range(6):  # vessels winding away from the disc: every eye its own (as same_eye needs)
        angle_x, angle_y = rng.uniform(-1, 1), rng.uniform(-1, 1)
        end = (disc[0] - int(60 * abs(angle_x)) - 10, disc[1] + int(60 * angle_y))
        points = [disc]
        for k in range(1, 6):
            points.append((disc[0] + (end[0] - disc[0]) * k / 5 + wiggle.uniform(-6, 6),
                           disc[1] + (end[1] - disc[1]) * k / 5 + wiggle.uniform(-6, 6)))  # fmt: skip
        d.line(points, fill=(110, 30, 20), width=2)
    d.ellipse((disc[0] - 9, disc[1] - 9, disc[0] + 9, disc[1] + 9), fill=(245, 215, 150))
    if macula:  # a darker spot 2.5 disc diameters (18 px) temporal of the disc
        mx = disc[0] - 45
        d.ellipse((mx - 10, disc[1] - 10, mx + 10, disc[1] + 10), fill=(120, 50, 25))
    if lesion == "spots":
        for _ in range(5):
            x, y = cx - size // 6 + rng.randint(-8, 8), cy + rng.randint(-10, 10)
            d.ellipse((x - 4, y - 4, x + 4, y + 4), fill=(250, 240, 120))
    elif lesion == "blob":
        x, y = lesion_at or (cx - size // 6, cy + 6)
        r = max(4, size // 8)
        d.ellipse((x - r, y - r, x + r, y + r), fill=(60, 15, 10))
    elif lesion == "exudate":  # a pale, sharply bounded patch (drusen / hard exudates)
        x, y = lesion_at or (cx - size // 6, cy + 6)
        r = max(4, size // 8)
        d.ellipse((x - r, y - r, x + r, y + r), fill=(255, 255, 235))
    im = im.filter(ImageFilter.GaussianBlur(0.6))
    x0, y0, x1, y1 = box
    fov = (max(0, x0), max(0, y0), min(w, x1), min(h, int(h * 0.85) if wide_field else y1))
    return im, fov


def write_dataset(
    root: Path, patients: int = 12, classes=("normal", "spots", "blob"), size: int = 96, unlabelled: int = 0
) -> Path:
    """A manifest with two eyes per patient; each patient's eyes share a class. Returns the manifest."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for p in range(patients):
        label = classes[p % len(classes)]
        for eye in ("left", "right"):
            name = f"images/{p}_{eye}.jpg"
            im, _ = fundus(size, LESIONS.get(label, label), seed=p * 2 + (eye == "right"))
            im.save(root / name, quality=92)
            rows.append([name, p, eye, label])
    for u in range(unlabelled):
        name = f"images/u{u}.jpg"
        fundus(size, None, seed=1000 + u)[0].save(root / name)
        rows.append([name, 1000 + u, "left", ""])
    manifest = root / "manifest.csv"
    with open(manifest, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image", "patient_id", "eye", "label"])
        w.writerows(rows)
    return manifest


def dicom_file(path, rgb=None, **tags):
    """An ophthalmic-photography DICOM file, with the RGB pixels given or without pixel data, and any
    other tags (PatientID="12", ImageLaterality="R", ...)."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.77.1.5.1"  # ophthalmic photography 8 bit
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.Modality, ds.SOPInstanceUID = "OP", meta.MediaStorageSOPInstanceUID
    if rgb is not None:
        ds.Rows, ds.Columns = rgb.shape[:2]
        ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
        ds.PixelData = rgb.tobytes()
    for name, value in tags.items():
        setattr(ds, name, value)
    ds.save_as(path, enforce_file_format=True)
    return path


def everyday_photo(path):
    """Sky over a meadow with a red house: fills the frame, no dark border, blue and green dominate."""
    a = np.zeros((120, 160, 3), np.uint8)
    a[:60] = (110, 160, 230)
    a[60:] = (70, 150, 60)
    a[40:80, 60:100] = (180, 40, 30)
    Image.fromarray(a).save(path, format="JPEG")
    return path


def two_laser_widefield(path):
    """An ultra-widefield composite as red/green scanning-laser ophthalmoscopes write it: green-dominant
    retina with an orange disc, bright green lids and lashes filling the frame's corners, no blue."""
    a = np.zeros((150, 200, 3), np.uint8)
    a[:] = (60, 150, 0)  # lids and lashes, bright in the green laser
    yy, xx = np.mgrid[:150, :200]
    retina = ((xx - 100) / 95) ** 2 + ((yy - 75) / 70) ** 2 < 1
    a[retina] = (110, 140, 0)
    a[65:85, 120:140] = (220, 200, 0)  # the optic disc
    a[74:76, 40:120] = (50, 70, 0)  # a vessel
    Image.fromarray(a).save(path, format="JPEG", quality=90)
    return path


def veined_fundus(seed: int, size: int = 128) -> Image.Image:
    """A fundus with 8 to 16 winding vessels from a disc that moves about, different for every seed: an eye
    that can be told from others by its vessels (same_eye), as real eyes can."""
    rng = random.Random(seed)
    im = Image.new("RGB", (size, size), (0, 0, 0))
    d = ImageDraw.Draw(im)
    c, r = size // 2, int(size * 0.45)
    d.ellipse((c - r, c - r, c + r, c + r), fill=(175, 85, 45))
    disc = (c + int(0.2 * size) + rng.randint(-12, 6), c + rng.randint(-12, 12))
    for _ in range(rng.randint(8, 16)):
        x, y = disc
        angle = rng.uniform(0, 2 * np.pi)
        width = rng.choice((1, 2, 3))
        for _ in range(14):
            angle += rng.uniform(-0.5, 0.5)
            nx, ny = x + 6 * np.cos(angle), y + 6 * np.sin(angle)
            d.line((x, y, nx, ny), fill=(105, 30, 20), width=width)
            x, y = nx, ny
    d.ellipse((disc[0] - 8, disc[1] - 8, disc[0] + 8, disc[1] + 8), fill=(245, 215, 150))
    return im.filter(ImageFilter.GaussianBlur(0.6))
