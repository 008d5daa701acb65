"""Fundus-appropriate augmentation on uint8 image batches, per image, seeded by the global RNG.

Operating on the cached uint8 tensors (not on decoded JPEGs) keeps augmentation cheap on a 2-core
CPU. Each image gets its own random flip, rotation, scale/crop jitter and photometric change.
"""

from __future__ import annotations

import torch
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

AUGMENTATIONS = ("none", "fundus")


def build(name: str, image_size: int):
    if name == "none":
        return None
    if name == "fundus":
        return v2.Compose(
            [
                v2.RandomHorizontalFlip(),
                v2.RandomVerticalFlip(),
                # The fundus is a disc on black: rotations are natural, the corners stay black.
                v2.RandomAffine(degrees=180, scale=(0.9, 1.1), translate=(0.03, 0.03)),
                v2.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.1, hue=0.02),
                RandomGamma(0.8, 1.25),
            ]
        )
    raise ValueError(f"unknown augmentation {name!r}; available: {', '.join(AUGMENTATIONS)}")


class RandomGamma(torch.nn.Module):
    """torchvision has adjust_gamma but no random-gamma transform."""

    def __init__(self, low: float, high: float):
        super().__init__()
        self.low, self.high = low, high

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        gamma = float(torch.empty(1).uniform_(self.low, self.high))
        return F.adjust_gamma(image, gamma)


def apply(transform, batch: torch.Tensor) -> torch.Tensor:
    """Apply `transform` to each uint8 image of (N, 3, H, W) independently."""
    if transform is None:
        return batch
    return torch.stack([transform(image) for image in batch])
