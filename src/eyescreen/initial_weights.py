"""Where `train --init` starts from: an `eyescreen pretrain` output, or a trained eyescreen checkpoint.

A trained checkpoint is how a model moves on: to a larger input size (train small and fast, then
fine-tune large: the convolutions do not care about the size), or to a hospital's own photographs.
Every tensor whose name and shape match is copied. The classifier layer is copied only from a model
trained on the same classes in the same order: the same shape with other classes would be a silent
mislabelling. A trained checkpoint of the same data must not have trained on this run's validation or
test images (`check_held_out`): fine-tune on the split it was trained with.
"""

from __future__ import annotations

from pathlib import Path

from safetensors.torch import load_file
from torch import nn

from .checkpoint import CheckpointError, read_meta
from .data import manifest_fingerprint
from .fusion import EYE_HEAD
from .models import BINOCULAR_SUFFIX


def load_initial_weights(model: nn.Module, path: str | Path, model_name: str, classes: list[str]) -> str:
    """Copy the weights at `path` into `model` (a single-eye model or a both-eye model's backbone);
    returns a one-line account of what was copied."""
    meta = read_meta(path)
    pretrained = meta.get("kind") == "pretrained"
    if not pretrained and "classes" not in meta:
        raise CheckpointError(f"{path}: neither an `eyescreen pretrain` output nor a trained checkpoint")
    source_name = meta["model"]["name"].removesuffix(BINOCULAR_SUFFIX)
    if source_name != model_name.removesuffix(BINOCULAR_SUFFIX):
        what = "pre-trained" if pretrained else "trained"
        raise CheckpointError(f"{path}: {what} {meta['model']['name']}, but this run trains {model_name}")
    keep_head = not pretrained and meta["classes"] == list(classes)
    layers = model.head_layers if hasattr(model, "head_layers") else (model.head_layer,)  # both-eye: two
    heads = tuple(f"{name}." for name in layers)
    weights = load_file(str(path))
    # a both-eye model's eye head is the single-eye model's head, applied to each eye: either feeds the other
    head = f"{(model.backbone if hasattr(model, 'backbone') else model).head_layer}."
    copied = {}
    for key, value in model.state_dict().items():
        if key.startswith(heads) and not keep_head:
            continue
        source = _source_key(key, weights, head)
        if source is not None and weights[source].shape == value.shape:
            copied[key] = weights[source]
    if not copied:
        raise CheckpointError(f"{path}: no weights match {model_name}")
    model.load_state_dict(copied, strict=False)
    classifier = "with" if keep_head else "without"
    return f"initialised {len(copied)} weight tensors from {path} ({classifier} its classifier layer)"


def _source_key(key: str, weights: dict, head: str) -> str | None:
    """The name of `key` in a checkpoint of the same backbone, single-eye or both-eye (`head`: the
    single-eye model's head layer, with its dot, which a both-eye model calls `head_eye.`)."""
    candidates = [key, key.removeprefix("backbone."), f"backbone.{key}"]
    eye_head = f"{EYE_HEAD}."
    if key.startswith(eye_head):
        candidates.append(head + key.removeprefix(eye_head))
    elif key.startswith(head):
        candidates.append(eye_head + key.removeprefix(head))
    return next((c for c in candidates if c in weights), None)


def same_data(meta: dict, data: str | Path) -> bool:
    """Was the checkpoint trained on this data: the same manifest path, or the same manifest bytes
    (a copy on another disk or machine; older checkpoints: compared with the file at the recorded path)."""
    if meta.get("data") == str(Path(data).resolve()):
        return True
    here = manifest_fingerprint(data)
    if here is None:
        return False
    recorded = meta.get("data_sha256")
    if recorded is None and meta.get("data") and Path(meta["data"]).is_file():
        recorded = manifest_fingerprint(meta["data"])
    return recorded == here


def check_held_out(path: str | Path, data: str | Path, split: dict[str, str], use: str = "fine-tune") -> None:
    """Refuse a start from (or a teacher in) a checkpoint trained on the same data with another split:
    the images it trained on that this run holds out would make the validation and test numbers look
    better than they are. `use` names what the run would do with it, for the message."""
    meta = read_meta(path)
    if meta.get("kind") == "pretrained" or not same_data(meta, data):
        return  # pre-training has its own --holdout-split; other data shares no images
    seen = meta.get("split", {})
    leaked = [key for key, part in split.items() if part != "train" and seen.get(key) == "train"]
    if leaked:
        raise ValueError(
            f"{path}: trained on {len(leaked)} images of this data that this run holds out for validation "
            f"or test (e.g. {leaked[0]}); {use} on its own split: --split {Path(path).parent / 'split.csv'}"
        )
