import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from eyescreen import preprocess
from eyescreen.preprocess import (
    ImageCache,
    ImageError,
    Preprocessing,
    crop_to_field,
    field_of_view,
    read_image,
)
from synthetic import fundus


@pytest.mark.parametrize("wide_field", [False, True], ids=["circular", "wide-field"])
@pytest.mark.parametrize("offset", [(0, 0), (-12, 6)])
def test_field_of_view_box_matches_the_drawn_fundus(wide_field, offset):
    im, (x0, y0, x1, y1) = fundus(200, wide_field=wide_field, offset=offset)
    mask = field_of_view(np.asarray(im))
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    assert abs(cols[0] - x0) <= 3 and abs(cols[-1] + 1 - x1) <= 3
    assert abs(rows[0] - y0) <= 3 and abs(rows[-1] + 1 - y1) <= 3


def test_crop_pads_to_a_square_around_the_field():
    im, (x0, y0, x1, y1) = fundus(200, wide_field=True)
    out = crop_to_field(im)
    assert out.width == out.height == pytest.approx(max(x1 - x0, y1 - y0), abs=4)
    # The black frame around an off-centre circular fundus is removed: the crop spans the fundus only.
    circ, (x0, y0, x1, y1) = fundus(200, offset=(20, 0))
    side = crop_to_field(circ).width
    assert side == pytest.approx(max(x1 - x0, y1 - y0), abs=4) and side < 180


def test_exif_orientation_is_applied(tmp_path):
    im = Image.new("RGB", (60, 40), (200, 100, 50))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    path = tmp_path / "rotated.jpg"
    im.save(path, exif=exif)
    assert read_image(path).size == (40, 60)
    assert preprocess.stored_size(path) == (40, 60)  # from the header, turned the same way
    assert preprocess.stored_size(path.read_bytes()) == (40, 60)  # check-data's: the bytes it read
    im.save(tmp_path / "upright.png")
    assert preprocess.stored_size(tmp_path / "upright.png") == (60, 40)


@pytest.mark.parametrize(
    "content, message",
    [(b"", "empty file"), (b"this is not an image", "not a readable image"), (None, "cannot decode")],
)
def test_bad_files_raise_errors_naming_the_file(tmp_path, content, message):
    path = tmp_path / "bad.jpg"
    if content is None:  # a truncated JPEG
        fundus(128)[0].save(path)
        path.write_bytes(path.read_bytes()[:400])
    else:
        path.write_bytes(content)
    with pytest.raises(ImageError, match=message) as info:
        preprocess.preprocess_image(path, Preprocessing(64))
    assert str(path) in str(info.value)


def test_all_black_frame_has_no_field_of_view(tmp_path):
    path = tmp_path / "black.png"
    Image.new("RGB", (100, 100)).save(path)
    with pytest.raises(ImageError, match="no fundus field of view"):
        preprocess.preprocess_image(path, Preprocessing(64))


def test_cache_avoids_decoding_again_and_depends_on_parameters(tmp_path, monkeypatch):
    path = tmp_path / "eye.jpg"
    fundus(128)[0].save(path)
    cache = ImageCache(Preprocessing(64), tmp_path / "cache")
    first = cache.get(path)
    assert first.shape == (64, 64, 3) and first.dtype == np.uint8

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded a cached image again")

    monkeypatch.setattr(preprocess, "preprocess_image", no_decoding)
    assert np.array_equal(ImageCache(Preprocessing(64), tmp_path / "cache").get(path), first)
    with pytest.raises(AssertionError, match="decoded"):  # other parameters: another key, a new decode
        ImageCache(Preprocessing(48), tmp_path / "cache").get(path)


def test_cache_miss_reads_the_file_once(tmp_path, monkeypatch):
    # the key hashes the bytes and the decode starts from the same bytes: a first pass over a dataset
    # on a network share reads each photograph once, not twice
    path = tmp_path / "eye.jpg"
    fundus(128)[0].save(path)
    reads = []
    real_read_bytes = Path.read_bytes

    def counting_read_bytes(self):
        reads.append(self.name)
        return real_read_bytes(self)

    monkeypatch.setattr(Path, "read_bytes", counting_read_bytes)
    out = ImageCache(Preprocessing(64), tmp_path / "cache").get(path)
    assert reads == ["eye.jpg"]
    assert np.array_equal(out, preprocess.preprocess_image(path, Preprocessing(64)))


def test_cache_names_a_file_it_cannot_read(tmp_path, monkeypatch):
    path = tmp_path / "eye.jpg"
    fundus(128)[0].save(path)

    def failing_read_bytes(self):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(Path, "read_bytes", failing_read_bytes)
    with pytest.raises(ImageError, match=r"eye\.jpg: cannot read file \(Permission denied\)"):
        ImageCache(Preprocessing(64), tmp_path / "cache").get(path)


@pytest.mark.parametrize("method", ["clahe", "graham"])
def test_structure_enhancement_changes_pixels_and_the_cache_key(tmp_path, method):
    path = tmp_path / "eye.jpg"
    fundus(160, "spots")[0].save(path)
    plain = preprocess.preprocess_image(path, Preprocessing(96))
    enhanced = preprocess.preprocess_image(path, Preprocessing(96, enhance=method))
    assert enhanced.dtype == np.uint8 and enhanced.shape == plain.shape
    assert not np.array_equal(plain, enhanced)
    assert Preprocessing(96, enhance=method).key() != Preprocessing(96).key()
    if method == "graham":
        assert enhanced[0, 0].tolist() == [0, 0, 0]  # outside the field of view stays black
    with pytest.raises(ValueError, match="enhance='sharpen'"):
        Preprocessing(96, enhance="sharpen")


def test_a_large_jpeg_is_decoded_only_as_large_as_the_model_needs(tmp_path):
    big = tmp_path / "camera.jpg"
    fundus(1600, seed=3)[0].save(big, quality=95)
    Image.open(big).save(tmp_path / "camera.png")
    assert preprocess.read_image(big).size == (1600, 1600)  # without at_least: whole
    reduced = preprocess.read_image(big, at_least=256)
    assert 256 <= min(reduced.size) and max(reduced.size) <= 800  # a DCT scale of 1/2 or less
    assert preprocess.read_image(tmp_path / "camera.png", at_least=256).size == (1600, 1600)  # not a JPEG
    small = tmp_path / "odir-sized.jpg"  # ODIR-5K's copy here: 256 px, read whole for any model of 64 px up
    fundus(256, seed=3)[0].save(small, quality=95)
    assert preprocess.read_image(small, at_least=preprocess.DECODE_MARGIN * 64).size == (256, 256)
    # what the model gets: within a level or so of resizing the whole decode
    whole = preprocess.crop_to_field(preprocess.read_image(big)).resize((64, 64), Image.Resampling.BICUBIC)
    out = preprocess.cropped_fundus(big, 64)
    assert np.abs(np.asarray(whole, dtype=int) - out).mean() < 1.0


def test_images_read_on_several_threads_come_back_in_order_with_the_bad_ones_named(tmp_path):
    paths = []
    for i in range(12):
        paths.append(tmp_path / f"{i}.jpg")
        fundus(80, seed=i)[0].save(paths[-1])
    paths[3].write_bytes(b"not an image")
    paths[8] = tmp_path / "missing.jpg"
    prep = Preprocessing(48)
    one = preprocess.load_stack(paths, ImageCache(prep, tmp_path / "a"), progress=False, workers=1)
    four = preprocess.load_stack(paths, ImageCache(prep, tmp_path / "b"), progress=False, workers=4)
    assert one[1] == four[1] == [i for i in range(12) if i not in (3, 8)]
    assert torch.equal(one[0], four[0]) and len(four[0]) == 10
    assert [i for i, _ in four[2]] == [3, 8]
    assert "3.jpg: not a readable image" in four[2][0][1] and "missing.jpg: file not found" in four[2][1][1]


def test_cached_images_read_on_several_threads_parse_their_headers_one_at_a_time(tmp_path, monkeypatch):
    # np.load's header parsing (ast) is not thread-safe in CPython 3.11: reading the cache on threads
    # failed once with "AST constructor recursion depth mismatch".
    paths = []
    for i in range(8):
        paths.append(tmp_path / f"{i}.jpg")
        fundus(64, seed=i)[0].save(paths[-1])
    cache = ImageCache(Preprocessing(32), tmp_path / "cache")
    first = preprocess.load_stack(paths, cache, progress=False, workers=1)[0]
    inside, most, load = [0], [0], np.load

    def slow_load(*args, **kwargs):
        inside[0] += 1
        most[0] = max(most[0], inside[0])
        time.sleep(0.005)  # lets the other threads in, were they allowed
        try:
            return load(*args, **kwargs)
        finally:
            inside[0] -= 1

    monkeypatch.setattr(np, "load", slow_load)
    again = preprocess.load_stack(paths, cache, progress=False, workers=4)[0]
    assert torch.equal(again, first)
    assert most[0] == 1


def test_the_field_of_view_mask_is_scipy_ndimage_s_pixel_for_pixel():
    # OpenCV computes it since scipy.ndimage was found slower; the masks (and cached images) must not change.
    from scipy import ndimage

    def reference(rgb):
        intensity = rgb.max(axis=2).astype(np.float32)
        mask = intensity > max(12.0, 0.1 * float(np.percentile(intensity, 99)))
        mask = ndimage.binary_opening(mask, structure=np.ones((3, 3)), iterations=2)
        labels, n = ndimage.label(mask)
        if n == 0:
            return mask
        mask = labels == 1 + int(np.argmax(ndimage.sum_labels(mask, labels, index=np.arange(1, n + 1))))
        return ndimage.binary_fill_holes(mask)

    rng = np.random.default_rng(0)
    images = [np.asarray(fundus(96, seed=s, wide_field=s % 2 == 0)[0]) for s in range(6)]
    for _ in range(30):  # speckles: many regions, holes, regions of one size, regions at the frame's edge
        a = (rng.random(tuple(rng.integers(8, 60, 2))) < rng.uniform(0.2, 0.8)).astype(np.uint8) * 200
        images.append(np.dstack([np.kron(a, np.ones((2, 2), np.uint8))] * 3))
    for rgb in images:
        mask = field_of_view(rgb)
        assert np.array_equal(mask, reference(rgb))
        assert np.array_equal(preprocess.erode(mask, 3), ndimage.binary_erosion(mask, iterations=3))


def test_views_combine_each_patients_photographs_each_read_once(tmp_path):
    from eyescreen.preprocess import load_views

    for name in ("a", "b", "c"):
        Image.fromarray(np.full((8, 8, 3), ord(name), np.uint8)).save(tmp_path / f"{name}.png")
    (tmp_path / "bad.png").write_bytes(b"x")
    reads = []

    def read(path):
        reads.append(path.name)
        if path.name == "bad.png":
            raise ImageError(f"{path}: broken")
        return np.array(Image.open(path)), [f"{path.name} noted"]

    p = {n: tmp_path / f"{n}.png" for n in ("a", "b", "c", "bad")}
    views = load_views([((p["a"], p["b"]), p["c"]), (None, p["bad"]), ([p["bad"]], None)], read, 8)
    assert sorted(reads) == ["a.png", "b.png", "bad.png", "c.png"]  # each photograph once
    assert views.paths == [(p["a"], p["c"]), (p["b"], p["c"]), (None, None), (None, None)]
    assert views.owner.tolist() == [0, 0, 1, 2]
    assert views.mask.tolist() == [[True, True], [True, True], [False, False], [False, False]]
    assert views.images[1, 0, 0, 0, 0] == ord("b") and views.images[1, 1, 0, 0, 0] == ord("c")
    assert not views.images[2:].any()  # no eye read: zeros
    assert (
        views.notes[0] == ["a.png noted", "b.png noted", "c.png noted"] and views.errors[1][0][0] == p["bad"]
    )
    kept = views.select(views.mask.any(1))
    assert kept.owner.tolist() == [0, 0] and kept.paths == views.paths[:2]
    nothing = load_views([(p["bad"], None)], read, 8)  # not one photograph read in the chunk
    assert nothing.images.shape == (1, 2, 3, 8, 8) and not nothing.mask.any()
