"""Export a checkpoint to ONNX: input a normalised float batch (N, 3, H, W), output probabilities; for a
both-eye model, both eyes (N, 2, 3, H, W) and which are present (N, 2), output the patient's and each
eye's probabilities.

The checkpoint's description (classes, preprocessing, normalisation, calibration) travels in the ONNX
file's metadata, so a runtime without eyescreen knows how to prepare images, name the outputs and
apply the decision rule and referable threshold that `predict` applies.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch
from torch import nn

from .checkpoint import load_model
from .ensemble import Ensemble
from .fusion import LEFT, RIGHT
from .models import takes_both_eyes


class _WithSoftmax(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.model(x), dim=1)


class _BothEyesWithSoftmax(nn.Module):
    """A both-eye model as a fixed-shape graph. Its own forward sends only the present eyes through the
    backbone, picking them by value, which the exporter cannot trace; here every eye goes through it and
    an absent eye's features are then zeroed, as `features` leaves them. In eval mode batch norm treats
    each image on its own, so the present eyes' results are the same. An ensemble of both-eye models:
    each member so, their logits averaged as `Ensemble` averages them."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.members = model.members if isinstance(model, Ensemble) else nn.ModuleList([model])

    def forward(self, images: torch.Tensor, present: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mask = present > 0.5
        eye_logits, patient_logits = zip(*(_traceable(m, images, mask) for m in self.members), strict=True)
        patient, eyes = (torch.stack(logits).mean(0) for logits in (patient_logits, eye_logits))
        return torch.softmax(patient, dim=-1), torch.softmax(eyes, dim=-1)


def _traceable(
    model: nn.Module, images: torch.Tensor, mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """`Binocular.forward` with every eye through the backbone: (per-eye logits, patient logits)."""
    if model.mirror_left:
        images = torch.stack([images[:, RIGHT], images[:, LEFT].flip(-1)], dim=1)
    f = model.backbone(images.flatten(0, 1)).view(images.shape[0], 2, -1) * mask.unsqueeze(-1)
    return model.decide(f, mask)


def export_onnx(checkpoint: str | Path, out: str | Path, opset: int = 18) -> Path:
    import onnx

    model, meta = load_model(checkpoint, "cpu")
    size = meta["preprocessing"]["image_size"]
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    batch = torch.export.Dim("batch", min=1, max=4096)
    if takes_both_eyes(meta["model"]):
        wrapped, example = _BothEyesWithSoftmax(model), (torch.zeros(1, 2, 3, size, size), torch.ones(1, 2))
        names = {"input_names": ["images", "present"], "output_names": ["probabilities", "eye_probabilities"]}
        shapes = {"images": {0: batch}, "present": {0: batch}}
    else:
        wrapped, example = _WithSoftmax(model), (torch.zeros(1, 3, size, size),)
        names = {"input_names": ["image"], "output_names": ["probabilities"]}
        shapes = {"x": {0: batch}}
    with warnings.catch_warnings():
        # Both inputs share the batch axis on purpose; the exporter says so at length.
        warnings.filterwarnings("ignore", message=".*shares the same shape constraints.*")
        program = torch.onnx.export(
            wrapped.eval(), example, dynamo=True, dynamic_shapes=shapes, opset_version=opset, **names
        )
    program.save(str(out))
    proto = onnx.load(str(out))
    # The calibration too (temperature, decision weights, referable threshold): without it another
    # runtime could not name the class `predict` names, nor flag the eyes it flags.
    keys = ("model", "classes", "preprocessing", "normalization", "calibration")
    description = {k: meta[k] for k in keys if k in meta}
    entry = proto.metadata_props.add()
    entry.key, entry.value = "eyescreen", json.dumps(description)
    onnx.save(proto, str(out))
    return out
