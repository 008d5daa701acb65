"""A corpus of awkward image files: each is read correctly or refused with a message naming it."""

import errno
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from eyescreen.preprocess import ImageError, Preprocessing, preprocess_image, stored_size
from synthetic import dicom_file, everyday_photo, fundus, two_laser_widefield

PREP = Preprocessing(64)


def _fundus_array(size=96):
    return np.asarray(fundus(size, seed=1)[0])


def make(tmp_path, kind):
    rgb = _fundus_array()
    path = tmp_path / f"{kind}.img"
    if kind == "png-alpha":
        a = np.dstack([rgb, np.full(rgb.shape[:2], 255, np.uint8)])
        a[:10, :10, 3] = 0
        Image.fromarray(a, "RGBA").save(path, format="PNG")
    elif kind == "png-16bit":
        Image.fromarray(rgb[..., 0].astype(np.uint16) * 257).save(path, format="PNG")
    elif kind == "greyscale":
        Image.fromarray(rgb).convert("L").save(path, format="JPEG")
    elif kind == "cmyk-jpeg":
        Image.fromarray(rgb).convert("CMYK").save(path, format="JPEG")
    elif kind == "palette":
        Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE).save(path, format="PNG")
    elif kind == "tiff":
        Image.fromarray(rgb).save(path, format="TIFF")
    elif kind == "bmp":
        Image.fromarray(rgb).save(path, format="BMP")
    return path


@pytest.mark.parametrize(
    "kind", ["png-alpha", "png-16bit", "greyscale", "cmyk-jpeg", "palette", "tiff", "bmp"]
)
def test_unusual_but_valid_images_are_read_as_rgb(tmp_path, kind):
    out = preprocess_image(make(tmp_path, kind), PREP)
    assert out.shape == (64, 64, 3) and out.dtype == np.uint8
    assert out.mean() > 20  # the fundus survived the conversion


def test_tiny_image_is_refused_with_its_size(tmp_path):
    path = tmp_path / "tiny.png"
    Image.fromarray(_fundus_array(16)).save(path)
    with pytest.raises(ImageError, match=r"tiny\.png: image too small \(16x16"):
        preprocess_image(path, PREP)


def test_decompression_bomb_is_refused(tmp_path, monkeypatch):
    path = tmp_path / "huge.png"
    Image.fromarray(_fundus_array(200)).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10_000)  # 200x200 = 40,000 pixels: "too large" here
    with pytest.raises(ImageError, match=r"huge\.png: image too large to decode safely"):
        preprocess_image(path, PREP)


def test_dicom_ophthalmic_photograph_is_read(tmp_path):
    path = dicom_file(tmp_path / "eye.dcm", _fundus_array())
    out = preprocess_image(path, PREP)
    assert out.shape == (64, 64, 3) and out.mean() > 20
    assert stored_size(path) == (96, 96)  # Columns, Rows from the header


def test_dicom_without_pixel_data_is_refused(tmp_path):
    path = dicom_file(tmp_path / "report.dcm")
    with pytest.raises(ImageError, match=r"report\.dcm: DICOM without pixel data"):
        preprocess_image(path, PREP)


def test_an_everyday_photo_is_read_but_warned_about(tmp_path):
    notes = []
    out = preprocess_image(everyday_photo(tmp_path / "holiday.jpg"), PREP, notes)
    assert out.shape == (64, 64, 3)
    assert len(notes) == 1 and "holiday.jpg: may not be a fundus photograph" in notes[0]


def test_no_warning_on_the_real_fundus_sample():
    from importlib import resources

    folder = resources.files("eyescreen") / "sample" / "images"
    notes = []
    for name in sorted(p.name for p in folder.iterdir() if p.name.endswith(".jpg")):
        preprocess_image(folder / name, PREP, notes)
    assert notes == []


def test_a_two_laser_ultra_widefield_composite_is_not_warned_about(tmp_path):
    # Green-dominant and frame-filling, as Optos-style images are; the everyday photo above is warned
    # about for the same two traits, so what spares this one is its empty blue channel.
    notes = []
    out = preprocess_image(two_laser_widefield(tmp_path / "optomap.jpg"), PREP, notes)
    assert notes == [] and out.shape == (64, 64, 3)


def test_a_greyscale_fundus_is_noted_as_not_colour_but_not_as_not_a_fundus(tmp_path):
    # Red-free photographs and angiograms are fundus images, but not what a colour model has seen.
    notes = []
    preprocess_image(make(tmp_path, "greyscale"), PREP, notes)
    assert len(notes) == 1 and "greyscale.img: greyscale, not a colour photograph" in notes[0]
    assert "may not be a fundus" not in notes[0]


def test_a_file_that_cannot_be_read_is_named_with_the_reason(tmp_path, monkeypatch):
    path = tmp_path / "eye.png"
    Image.fromarray(_fundus_array()).save(path)

    def failing_read(self):
        raise OSError(errno.EIO, "Input/output error")  # a network share gone away mid-read

    monkeypatch.setattr(Path, "read_bytes", failing_read)
    with pytest.raises(ImageError, match=r"eye\.png: cannot read file \(Input/output error\)"):
        preprocess_image(path, PREP)
