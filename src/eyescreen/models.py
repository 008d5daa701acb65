"""Model registry: `create_model(name, num_classes)`, `list_models()`.

Every model is built from scratch (no weights are ever downloaded) and carries three attributes that
the rest of the package relies on: `model_name`; `cam_layer`, the dotted name of the layer a CAM
method should target (see `cam_target`); `head_layer`, the final linear layer, whose input is the
pooled feature vector that the findings head, the both-eye model and initial weights build on.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}
_LAYERS: dict[str, tuple[str, str]] = {}  # name -> (cam_layer, head_layer)


def register(name: str, cam_layer: str, head_layer: str):
    def wrap(fn):
        _REGISTRY[name] = fn
        _LAYERS[name] = (cam_layer, head_layer)
        return fn

    return wrap


BINOCULAR_SUFFIX = "-binocular"  # "<backbone>-binocular": both eyes through one shared backbone


def list_models() -> list[str]:
    return sorted(_REGISTRY) + sorted(f"{name}{BINOCULAR_SUFFIX}" for name in _REGISTRY)


def describe_model(name: str) -> str:
    """One line on what a registered model is, from its builder's docstring."""
    backbone = name[: -len(BINOCULAR_SUFFIX)]
    if is_binocular(name) and backbone in _REGISTRY:
        return f"Both eyes of a patient through one shared {backbone}, for one decision per patient."
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; available: {', '.join(list_models())}")
    doc = _REGISTRY[name].__doc__
    return doc.strip().splitlines()[0] if doc else ""


def is_binocular(name: str) -> bool:
    return name.endswith(BINOCULAR_SUFFIX)


def takes_both_eyes(spec: dict) -> bool:
    """A checkpoint's model spec ({"name", "args"}): a both-eye model, or an ensemble of them (its
    members are all of one kind), which every command then treats as a both-eye model."""
    if spec["name"] == "ensemble":
        return is_binocular(spec["args"]["members"][0]["name"])
    return is_binocular(spec["name"])


def create_model(name: str, num_classes: int, **kwargs) -> nn.Module:
    if name == "ensemble":  # trained models averaged (ensemble.py)
        from .ensemble import Ensemble

        if "members" not in kwargs:
            raise ValueError("an ensemble is not trained: `eyescreen ensemble RUN_A/best.safetensors "
                             "RUN_B/best.safetensors ...` makes one from trained models")  # fmt: skip

        model = Ensemble(num_classes=num_classes, **kwargs)
        model.model_name = name
        return model
    if is_binocular(name) and name[: -len(BINOCULAR_SUFFIX)] in _REGISTRY:
        from .fusion import Binocular

        model = Binocular(name[: -len(BINOCULAR_SUFFIX)], num_classes=num_classes, **kwargs)
        model.model_name = name
        return model
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; available: {', '.join(list_models())}")
    model = _REGISTRY[name](num_classes=num_classes, **kwargs)
    model.model_name = name
    model.cam_layer, model.head_layer = _LAYERS[name]
    return model


def cam_target(model: nn.Module) -> nn.Module:
    """The module a CAM method should hook (the last spatial feature map)."""
    return model.get_submodule(model.cam_layer)


def split_head(model: nn.Module) -> nn.Linear:
    """Detach the model's final linear layer and return it: the model then returns pooled features."""
    head = model.get_submodule(model.head_layer)
    parent, _, child = model.head_layer.rpartition(".")
    setattr(model.get_submodule(parent), child, nn.Identity())
    return head


@register("resnet18", cam_layer="layer4", head_layer="fc")
def resnet18(num_classes: int) -> nn.Module:
    """ResNet-18, torchvision's architecture with random weights: the reference study's model."""
    from torchvision.models import resnet18 as tv_resnet18

    return tv_resnet18(weights=None, num_classes=num_classes)


class SpaceToDepthStem(nn.Module):
    """Each 2x2 block of pixels folded into channels (lossless), then the usual 7x7 stride-2 convolution.

    A ResNet with this stem runs on a 256-px image at about the cost of a 128-px one: every layer after the
    stem sees the feature-map sizes of a 128-px input, but the stem's filters see every pixel of the
    256-px photograph, where the small lesions of diabetic retinopathy are still there (as in TResNet's
    space-to-depth stem, Ridnik et al. 2021).
    """

    def __init__(self, out_channels: int = 64):
        super().__init__()
        self.unshuffle = nn.PixelUnshuffle(2)
        self.conv = nn.Conv2d(12, out_channels, kernel_size=7, stride=2, padding=3, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] % 2 or x.shape[-2] % 2:
            raise ValueError(
                f"a space-to-depth model needs an even image size, got {x.shape[-2]}x{x.shape[-1]}"
            )
        return self.conv(self.unshuffle(x))


@register("resnet18-s2d", cam_layer="layer4", head_layer="fc")
def resnet18_s2d(num_classes: int) -> nn.Module:
    """ResNet-18 whose first layer folds 2x2 pixels into channels: 256-px images at ~a 128-px cost."""
    model = resnet18(num_classes)
    model.conv1 = SpaceToDepthStem(model.conv1.out_channels)
    return model


@register("resnet18-half", cam_layer="layer4", head_layer="fc")
def resnet18_half(num_classes: int) -> nn.Module:
    """ResNet-18 at half width (32 to 256 channels): a 256-px image at about a 128-px ResNet-18's cost."""
    # A quarter of the compute at any size; every layer keeps the full-size feature maps, so the small
    # lesions of a 256-px photograph reach the deep layers (RESULTS.md, "Half the width at 256 px").
    from torchvision.models.resnet import BasicBlock

    model = resnet18(num_classes)
    width = 32
    model.conv1 = nn.Conv2d(3, width, kernel_size=7, stride=2, padding=3, bias=False)
    model.bn1 = nn.BatchNorm2d(width)
    for i, stride in enumerate((1, 2, 2, 2)):
        out = width * 2**i
        inp = out // 2 if i else width
        down = None
        if stride != 1 or inp != out:
            down = nn.Sequential(
                nn.Conv2d(inp, out, kernel_size=1, stride=stride, bias=False), nn.BatchNorm2d(out)
            )
        setattr(
            model, f"layer{i + 1}", nn.Sequential(BasicBlock(inp, out, stride, down), BasicBlock(out, out))
        )
    model.fc = nn.Linear(width * 8, num_classes)
    for m in model.modules():  # torchvision's initialisation of its ResNets
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    return model


class GeneralizedMeanPool(nn.Module):
    """Generalised-mean pooling over the feature map, (mean of x^p)^(1/p) (Radenović et al. 2019): between
    average pooling (p = 1) and max pooling (p large). A few strong responses, such as the small lesions of
    diabetic retinopathy in one corner of the fundus, are not averaged away over the whole field."""

    def __init__(self, p: float = 3.0, eps: float = 1e-6):
        super().__init__()
        self.p, self.eps = p, eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = x.float().clamp(min=self.eps).pow(self.p).mean((-2, -1), keepdim=True)  # fp32 under autocast
        return pooled.pow(1.0 / self.p).to(x.dtype)


@register("resnet18-gem", cam_layer="layer4", head_layer="fc")
def resnet18_gem(num_classes: int) -> nn.Module:
    """ResNet-18 with generalised-mean pooling (p = 3) instead of the average: small lesions weigh more."""
    model = resnet18(num_classes)
    model.avgpool = GeneralizedMeanPool()
    return model


# Deeper ResNets for a GPU, where capacity costs minutes (on a CPU, 2x and 2.3x ResNet-18's compute).
@register("resnet34", cam_layer="layer4", head_layer="fc")
def resnet34(num_classes: int) -> nn.Module:
    """ResNet-34, random weights: twice ResNet-18's compute, for a GPU."""
    from torchvision.models import resnet34 as tv_resnet34

    return tv_resnet34(weights=None, num_classes=num_classes)


@register("resnet50", cam_layer="layer4", head_layer="fc")
def resnet50(num_classes: int) -> nn.Module:
    """ResNet-50, random weights: 2.3 times ResNet-18's compute, for a GPU."""
    from torchvision.models import resnet50 as tv_resnet50

    return tv_resnet50(weights=None, num_classes=num_classes)


class SeedCNN(nn.Module):
    """The reference study's small sequential baseline: conv-ReLU-pool blocks, then dense layers."""

    def __init__(self, num_classes: int, widths=(32, 64, 128, 128), hidden: int = 256, dropout: float = 0.5):
        super().__init__()
        blocks, in_ch = [], 3
        for w in widths:
            blocks += [nn.Conv2d(in_ch, w, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2)]
            in_ch = w
        self.features = nn.Sequential(*blocks)
        # A fixed 7x7 grid keeps the dense layers independent of the input size.
        self.pool = nn.AdaptiveAvgPool2d(7)
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(in_ch * 7 * 7, hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.pool(self.features(x)))


# CAM on the last conv's ReLU output (before its pool); the head is the last dense layer
@register("seed-cnn", cam_layer="features.10", head_layer="classifier.4")
def seed_cnn(num_classes: int) -> nn.Module:
    """The reference study's small sequential CNN baseline (conv-ReLU-pool blocks, dense layers)."""
    return SeedCNN(num_classes)


@register("tiny-cnn", cam_layer="3", head_layer="6")  # CAM on the second conv's ReLU
def tiny_cnn(num_classes: int) -> nn.Module:
    """A few-thousand-parameter CNN for tests and quick smoke runs."""
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 16, 3, padding=1, stride=2),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, num_classes),
    )
