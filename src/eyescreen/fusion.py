"""Both-eye model: one shared backbone over [B, 2, C, H, W] (right, left), a fusion head, a missing-eye mask.

Side awareness: the left eye is mirrored before the backbone so that the optic disc falls on the same
side in both eyes; the backbone then sees one canonical orientation (MONAI's MIL model is the pattern:
several images, one shared encoder, one pooled decision).

Outputs per-eye logits [B, 2, K] and a patient logit [B, K]. An absent eye (mask False) contributes
nothing: it is excluded from mean/max/attention pooling and zeroed (with its presence flag) for
concatenation, so a patient with one photograph still gets a prediction.
"""

from __future__ import annotations

import torch
from torch import nn

from .models import create_model, split_head

POOLINGS = ("mean", "max", "attention", "concat")
RIGHT, LEFT = 0, 1  # the order of the eye axis
EYE_HEAD = "head_eye"  # the per-eye class layer's name: what a single-eye model's head becomes (--init)


class Binocular(nn.Module):
    def __init__(self, backbone: str = "resnet18", num_classes: int = 4, pooling: str = "attention",
                 mirror_left: bool = True):  # fmt: skip
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"pooling={pooling!r}: choose one of {', '.join(POOLINGS)}")
        net = create_model(backbone, num_classes=num_classes)
        self.head_eye = split_head(net)  # the backbone now returns pooled features
        self.features_dim = self.head_eye.in_features
        self.backbone = net
        self.pooling, self.mirror_left = pooling, mirror_left
        d = self.features_dim
        if pooling == "attention":
            self.attention = nn.Sequential(nn.Linear(d, 128), nn.Tanh(), nn.Linear(128, 1))
        self.head_patient = nn.Linear(2 * (d + 1) if pooling == "concat" else d, num_classes)
        self.cam_layer = f"backbone.{net.cam_layer}"
        self.head_layers = (EYE_HEAD, "head_patient")  # the class layers, where a single-eye model has one
        self.head_layer = EYE_HEAD  # sees one eye's pooled features: the findings head hooks it

    def features(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """[B, 2, C, H, W] -> [B, 2, D], the left eye mirrored first. Only present eyes go through the
        backbone (so an absent eye cannot even touch batch-norm statistics); absent ones are zeros."""
        if self.mirror_left:
            x = torch.stack([x[:, RIGHT], x[:, LEFT].flip(-1)], dim=1)
        present = mask.flatten()
        flat = x.flatten(0, 1)[present]
        if _channels_last(self.backbone):
            flat = flat.contiguous(memory_format=torch.channels_last)
        out = self.backbone(flat)
        f = out.new_zeros((present.numel(), out.shape[-1]))
        f[present] = out
        return f.view(x.shape[0], 2, -1)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        if mask is None:
            mask = torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
        if not mask.any(dim=1).all():
            raise ValueError("every patient needs at least one eye")
        return self.decide(self.features(x, mask), mask)

    def decide(self, f: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Eye features [B, 2, D] (zeros for an absent eye) -> per-eye logits, patient logits."""
        eye_logits = self.head_eye(f)
        m = mask.unsqueeze(-1)
        if self.pooling == "mean":
            pooled = (f * m).sum(1) / m.sum(1)
        elif self.pooling == "max":
            pooled = f.masked_fill(~m, float("-inf")).amax(1)
        elif self.pooling == "attention":
            scores = self.attention(f).masked_fill(~m, float("-inf"))
            pooled = (torch.softmax(scores, dim=1) * f).sum(1)
        else:  # concat: absent eye zeroed, with a presence flag so the head knows
            pooled = torch.cat([f * m, m.float()], dim=-1).flatten(1)
        return eye_logits, self.head_patient(pooled)

    def eye_weights(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Attention weight of each eye in the patient decision ([B, 2]); uniform over present eyes otherwise."""
        if self.pooling != "attention":
            return mask.float() / mask.float().sum(1, keepdim=True)
        scores = self.attention(self.features(x, mask)).squeeze(-1).masked_fill(~mask, float("-inf"))
        return torch.softmax(scores, dim=1)


def _channels_last(net: nn.Module) -> bool:
    """Follow the backbone's memory format (the trainer may have converted it to channels_last)."""
    for p in net.parameters():
        if p.dim() == 4:
            return p.is_contiguous(memory_format=torch.channels_last) and not p.is_contiguous()
    return False
