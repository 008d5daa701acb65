"""Export a checkpoint to ONNX: input a normalised float batch (N, 3, H, W), output probabilities.

The checkpoint's description (classes, preprocessing, normalisation, calibration) travels in the ONNX
file's metadata, so a runtime without eyescreen knows how to prepare images, name the outputs and
apply the decision rule and referable threshold that `predict` applies.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from .checkpoint import load_model
from .models import is_binocular


class _WithSoftmax(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.model(x), dim=1)


def export_onnx(checkpoint: str | Path, out: str | Path, opset: int = 18) -> Path:
    import onnx

    model, meta = load_model(checkpoint, "cpu")
    if is_binocular(meta["model"]["name"]):
        # Its missing-eye mask picks images by value, which the exporter cannot trace into a graph.
        raise ValueError(
            f"{checkpoint}: a both-eye model ({meta['model']['name']}) cannot be exported to ONNX yet; "
            "use `eyescreen predict --pairs` or `eyescreen serve` for it"
        )
    size = meta["preprocessing"]["image_size"]
    example = torch.zeros(1, 3, size, size)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    batch = torch.export.Dim("batch", min=1, max=4096)
    program = torch.onnx.export(
        _WithSoftmax(model).eval(),
        (example,),
        dynamo=True,
        input_names=["image"],
        output_names=["probabilities"],
        dynamic_shapes={"x": {0: batch}},
        opset_version=opset,
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
