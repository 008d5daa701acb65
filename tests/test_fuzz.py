"""Fuzz the image loader: damaged, truncated and random files raise ImageError (naming the file) and
nothing else. Bounded by the number of examples; FUZZ_EXAMPLES=5000 for a longer run."""

import io
import os

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from eyescreen.preprocess import ImageError, Preprocessing, preprocess_image
from synthetic import fundus

PREP = Preprocessing(48)
EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "150"))


def _encoded(fmt: str) -> bytes:
    buffer = io.BytesIO()
    im = fundus(64, "spots", seed=2)[0]
    im.save(buffer, format=fmt)
    return buffer.getvalue()


SEEDS = {fmt: _encoded(fmt) for fmt in ("JPEG", "PNG", "TIFF", "BMP", "WEBP")}
DICOM_HEADER = b"\x00" * 128 + b"DICM"


@st.composite
def damaged_files(draw):
    kind = draw(st.sampled_from([*SEEDS, "DICOM", "random"]))
    if kind == "random":
        return draw(st.binary(max_size=2048))
    data = bytearray(DICOM_HEADER + draw(st.binary(max_size=512)) if kind == "DICOM" else SEEDS[kind])
    for _ in range(draw(st.integers(0, 8))):  # flip bytes anywhere, header included
        i = draw(st.integers(0, len(data) - 1))
        data[i] = draw(st.integers(0, 255))
    if draw(st.booleans()):  # truncate
        data = data[: draw(st.integers(0, len(data)))]
    return bytes(data)


@pytest.mark.filterwarnings("ignore::UserWarning:PIL")  # Pillow's own notes on the damaged files: expected
@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=damaged_files())
def test_loader_raises_only_image_error(tmp_path, data):
    path = tmp_path / "fuzzed.img"
    path.write_bytes(data)
    try:
        out = preprocess_image(path, PREP)
    except ImageError as e:
        assert str(e).startswith(str(path))  # the message names the file
        return
    assert out.shape == (48, 48, 3) and out.dtype == np.uint8


def test_seed_files_are_valid():
    for data in SEEDS.values():
        assert Image.open(io.BytesIO(data)).size == (64, 64)
