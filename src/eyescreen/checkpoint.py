"""Self-describing checkpoints, written atomically and loaded with safe loaders only.

* `*.safetensors`: the model weights plus a JSON description in the safetensors metadata (model name
  and arguments, classes, preprocessing, normalisation, training config, data split). This is what
  `evaluate`, `predict` and later tools load. safetensors cannot execute code.
* `resume.pt`: weights, optimizer, scheduler, RNG state and history, read back with
  `torch.load(weights_only=True)`, which refuses arbitrary pickled objects.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file
from torch import nn

from .models import create_model

FORMAT = "eyescreen-checkpoint/1"
BEST = "best.safetensors"  # what `train` and `ensemble` write into their run folder
PRETRAINED = "pretrained.safetensors"  # what `pretrain` writes into its folder


class CheckpointError(ValueError):
    """A checkpoint that is missing, damaged or not an eyescreen checkpoint."""


def _atomic_write(path: Path, write: Callable[[str], None]) -> None:
    """Write through `write(tmp_name)` into a temporary file beside `path`, then rename it into place:
    readers see the old file or the new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def save_model(path: str | Path, model: nn.Module, meta: dict) -> None:
    save_weights(path, weights_of(model), meta)


def weights_of(model: nn.Module) -> dict[str, torch.Tensor]:
    """A copy of the model's weights on the CPU, unchanged by further training."""
    return {k: v.detach().to("cpu", copy=True).contiguous() for k, v in model.state_dict().items()}


def save_weights(path: str | Path, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    metadata = {"eyescreen": json.dumps({"format": FORMAT, **meta})}
    _atomic_write(Path(path), lambda tmp: save_file(tensors, tmp, metadata=metadata))


def file_sha256(path: str | Path) -> str:
    """The fingerprint of a checkpoint file: a job's outputs and `info` name the weights by it."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def checkpoint_in(path: str | Path, names: tuple[str, ...] = (BEST,)) -> str:
    """A folder stands for the first of these checkpoints in it; anything else is returned as given."""
    folder = Path(path)
    if folder.is_dir():
        for name in names:
            if (folder / name).is_file():
                return str(folder / name)
    return str(path)


def read_meta(path: str | Path) -> dict:
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"{path}: a folder without a {BEST} (a run that has not finished an epoch?)")
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        with safe_open(str(path), framework="pt") as f:
            raw = (f.metadata() or {}).get("eyescreen")
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: not a readable safetensors checkpoint ({e})") from None
    if raw is None:
        raise CheckpointError(f"{path}: safetensors file without eyescreen metadata")
    meta = json.loads(raw)
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path}: unsupported checkpoint format {meta.get('format')!r}")
    return meta


def load_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, dict]:
    """A trained classifier and its description (what every command that scores images needs)."""
    meta = read_meta(path)
    if meta.get("kind") == "pretrained":
        raise CheckpointError(f"{path}: weights from `eyescreen pretrain`, not a trained classifier (no classes); "
                              f"fine-tune them first: eyescreen train --data DATA --init {path}")  # fmt: skip
    if "classes" not in meta:
        raise CheckpointError(f"{path}: not a trained classifier (its description names no classes)")
    model = create_model(meta["model"]["name"], **meta["model"]["args"])
    try:
        state = load_file(str(path), device=str(device))
        model.load_state_dict(state)
    except (SafetensorError, RuntimeError, OSError) as e:
        raise CheckpointError(f"{path}: weights do not load ({e})") from None
    return model.to(device).eval(), meta


def save_state(path: str | Path, state: dict) -> None:
    _atomic_write(Path(path), lambda tmp: torch.save(state, tmp))


def load_state(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no resume state found (was the run started in this directory?)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for damaged or unsafe files
        raise CheckpointError(f"{path}: cannot be loaded safely ({type(e).__name__}: {e})") from None
