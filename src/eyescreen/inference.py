"""Device and precision choices, and batched probabilities from uint8 image tensors."""

from __future__ import annotations

import contextlib

import numpy as np
import torch
from torch import nn

from .cpu_precision import cpu_precision
from .preprocess import load_stack, normalize


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def resolve_precision(precision: str, device: torch.device) -> str:
    """'auto' means bf16 autocast on CUDA GPUs that have it (else fp16), and on CPUs with native bf16 where
    it measured faster than fp32 (cpu_precision), else fp32."""
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return cpu_precision()


def autocast(device: torch.device, precision: str):
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def _dihedral(x: torch.Tensor) -> list[torch.Tensor]:
    turns = [torch.rot90(x, k, dims=(-2, -1)) for k in range(4)]
    return turns + [t.flip(-1) for t in turns]


# Views for test-time augmentation. A fundus photograph has no preferred orientation once training has
# seen it flipped and turned at any angle; quarter turns and flips need no interpolation.
TTA_VIEWS = {
    "flips": lambda x: [x, x.flip(-1), x.flip(-2), x.flip(-2, -1)],
    "dihedral": _dihedral,
}
TTA_DESCRIPTIONS = {"flips": "flips (4 views)", "dihedral": "quarter turns x flips (8 views)"}


class ViewAverage(nn.Module):
    """Test-time augmentation: the mean of the logits over transformed copies of the image (`TTA_VIEWS`):
    its horizontal, vertical and double flips, or the 8 quarter turns and mirror images. A both-eye
    model's eyes ([B, 2, 3, H, W], then its mask) are transformed alike, and each of its outputs (per-eye
    and patient logits) is averaged apart."""

    def __init__(self, model: nn.Module, views: str = "flips"):
        super().__init__()
        if views not in TTA_VIEWS:
            raise ValueError(f"test-time augmentation {views!r}: choose one of {', '.join(TTA_VIEWS)}")
        self.model = model
        self.views = views

    def forward(self, x: torch.Tensor, *rest: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        outputs = [self.model(v, *rest) for v in TTA_VIEWS[self.views](x)]
        if isinstance(outputs[0], tuple):
            return tuple(torch.stack([o[i] for o in outputs]).mean(0) for i in range(len(outputs[0])))
        return torch.stack(outputs).mean(0)


def prepare_batch(batch: torch.Tensor, device, mean, std, channels_last: bool) -> torch.Tensor:
    x = normalize(batch.to(device, non_blocking=True), mean, std)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


@torch.inference_mode()
def predict_proba(
    model: nn.Module,
    images: torch.Tensor,
    mean,
    std,
    device: torch.device,
    precision: str = "fp32",
    channels_last: bool = False,
    batch_size: int = 64,
) -> np.ndarray:
    """Softmax probabilities (N, C) for uint8 images (N, 3, H, W); the model's mode is restored."""
    was_training = model.training
    model.eval()
    out = []
    try:
        for start in range(0, len(images), batch_size):
            x = prepare_batch(images[start : start + batch_size], device, mean, std, channels_last)
            with autocast(device, precision):
                logits = model(x)
            out.append(torch.softmax(logits.float(), dim=1).cpu())
    finally:
        model.train(was_training)
    if not out:
        return np.zeros((0, 0), dtype=np.float32)
    return torch.cat(out).numpy()


def paths_predictor(model, cache, norm, device, precision):
    """predict(paths) -> (probabilities of the readable ones, their indices): for fellow eyes, which are
    read when needed, not with the split."""

    def predict(paths):
        images, ok, _ = load_stack(paths, cache, progress=False)
        return predict_proba(model, images, norm["mean"], norm["std"], device, precision), ok

    return predict
