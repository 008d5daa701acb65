import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from synthetic import write_dataset  # noqa: E402

torch.set_num_threads(2)


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    """Never touch the user's cache from tests."""
    monkeypatch.setenv("EYESCREEN_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="session")
def synthetic_manifest(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("synthetic"), patients=30, unlabelled=2)
