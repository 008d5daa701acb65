"""Fundus-appropriate augmentation of whole uint8 image batches, on the batch's device.

Every image gets its own random flip, rotation, scale/shift jitter and photometric change, but the
work is done for the batch at once: one affine grid sample for all geometric changes and a few
broadcast operations for colour. Per-image torchvision transforms spent most of a training step on
this 2-core CPU (benchmarks/pipeline_profile.py); batched, augmentation costs a few percent of the
step, and on a GPU it runs there. Random draws come from the global CPU generator, so a seeded run
sees the same augmentations on any device.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

AUGMENTATIONS = ("none", "fundus", "light")

# RGB <-> YIQ: hue is a rotation of the (I, Q) chroma plane.
_RGB_TO_YIQ = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
_YIQ_TO_RGB = torch.linalg.inv(_RGB_TO_YIQ)
_LUMA = _RGB_TO_YIQ[0]


def build(name: str, image_size: int, crop_size: int = 0, crop_on_disc: float = 0.0):
    """The training transform `name`; with `crop_size`, each image is also cut to a random square of
    that many pixels at its own scale (in the same resampling as the rest of the geometry), and a
    share `crop_on_disc` of the crops is drawn to hold the optic disc (given per batch, see `apply`)."""
    crop = crop_size or None
    if name == "none":
        return RandomCrop(crop, crop_on_disc) if crop else None
    if name == "fundus":
        return FundusAugment(crop=crop, crop_on_disc=crop_on_disc)
    if name == "light":
        # Flips, a small tilt and zoom, a little brightness/contrast: the disc and macula stay roughly
        # where they are, so a network trained from scratch need not learn rotation invariance first.
        return FundusAugment(degrees=15, scale=(0.95, 1.05), translate=0.02, brightness=0.1,
                             contrast=0.1, saturation=0.0, hue=0.0, gamma=(1.0, 1.0), crop=crop,
                             crop_on_disc=crop_on_disc)  # fmt: skip
    raise ValueError(f"unknown augmentation {name!r}; available: {', '.join(AUGMENTATIONS)}")


def _uniform(n: int, low: float, high: float) -> torch.Tensor:
    return torch.empty(n).uniform_(low, high)


class FundusAugment(torch.nn.Module):
    """Flips, rotation (any angle: the fundus is a disc on black), scale and shift, then brightness,
    contrast, saturation, hue and gamma, each drawn per image. Input and output: uint8 (N, 3, H, W);
    with `crop`, the output is (N, 3, crop, crop), a square cut anywhere in the (transformed) image, or,
    for a share `crop_on_disc` of the images whose disc position is given, a square that holds the disc."""

    def __init__(self, degrees: float = 180, scale=(0.9, 1.1), translate: float = 0.03,
                 brightness: float = 0.2, contrast: float = 0.2, saturation: float = 0.1,
                 hue: float = 0.02, gamma=(0.8, 1.25), blur: float = 0.0, flip: bool = True,
                 crop: int | None = None, crop_on_disc: float = 0.0):  # fmt: skip
        super().__init__()
        self.blur = blur  # probability of a Gaussian blur (sigma 0.1-1.5 px), for self-supervised views
        self.flip, self.crop, self.crop_on_disc = flip, crop, crop_on_disc
        self.degrees, self.scale, self.translate = degrees, scale, translate
        self.brightness, self.contrast, self.saturation, self.hue = brightness, contrast, saturation, hue
        self.gamma = gamma

    def forward(self, batch: torch.Tensor, discs: torch.Tensor | None = None) -> torch.Tensor:
        """`discs`: optional (N, 3) [row, col, diameter] of each image's optic disc in pixels (NaN: unknown)."""
        if batch.dtype != torch.uint8 or batch.dim() != 4 or batch.shape[1] != 3:
            raise ValueError(f"expected a uint8 batch (N, 3, H, W), got {batch.dtype} {tuple(batch.shape)}")
        n = len(batch)
        x = batch.float().div_(255)
        if self.crop is not None and not 0 < self.crop <= min(batch.shape[-2:]):
            raise ValueError(f"crop {self.crop} does not fit images of {tuple(batch.shape[-2:])} pixels")
        x = self.geometry(x, n, discs)
        if self.photometric:
            x = self.colour(x, n)
        if self.blur:
            x = self.blurred(x, n)
        return x.mul_(255).round_().clamp_(0, 255).to(torch.uint8)

    @property
    def photometric(self) -> bool:
        return any((self.brightness, self.contrast, self.saturation, self.hue, self.gamma != (1.0, 1.0)))

    def geometry(self, x: torch.Tensor, n: int, discs: torch.Tensor | None = None) -> torch.Tensor:
        """One bilinear resampling for flip, rotation, scale, shift and crop; outside the image is black."""
        angle = _uniform(n, -self.degrees, self.degrees) * math.pi / 180
        scale = _uniform(n, *self.scale)
        flip_x = torch.where(torch.rand(n) < 0.5, -1.0, 1.0) if self.flip else torch.ones(n)
        flip_y = torch.where(torch.rand(n) < 0.5, -1.0, 1.0) if self.flip else torch.ones(n)
        shift = _uniform(2 * n, -self.translate, self.translate).view(n, 2) * 2  # grid spans [-1, 1]
        height, width = x.shape[-2:]
        out_shape = list(x.shape)
        if self.crop:
            # The output grid covers crop/size of the input at the same pixel scale. Its corner is a
            # whole pixel anywhere that keeps the crop inside, so a crop alone copies pixels exactly.
            out_shape[-2:] = [self.crop, self.crop]
            size = torch.tensor([width, height])
            corner = torch.stack([torch.randint(0, int(s) - self.crop + 1, (n,)) for s in size], 1)
            if discs is not None and self.crop_on_disc > 0:
                corner = self.corner_on_disc(corner, discs.cpu(), size)
            shift = shift + 2 * (corner + self.crop / 2 - size / 2) / size
            fraction = self.crop / size
            scale = scale / fraction.min()  # square images: one fraction (the smaller, if not square)
        cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
        # affine_grid maps output coordinates to where they are read in the input.
        theta = torch.stack(
            [
                torch.stack([cos * flip_x, -sin * flip_y, shift[:, 0]], 1),
                torch.stack([sin * flip_x, cos * flip_y, shift[:, 1]], 1),
            ],
            1,
        ).to(x.device)
        grid = F.affine_grid(theta, out_shape, align_corners=False)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)

    def corner_on_disc(self, corner: torch.Tensor, discs: torch.Tensor, size: torch.Tensor) -> torch.Tensor:
        """Replace the corner of a share of the crops by one whose crop holds the disc: the crop's centre
        is drawn uniformly within (crop / 2 / largest zoom - disc radius) of the disc's centre, so the disc
        lies in the crop's inscribed circle at any rotation and zoom (up to the few-pixel shift jitter);
        the crop stays inside the image, which may cut a disc at the very rim."""
        n = len(corner)
        chosen = (torch.rand(n) < self.crop_on_disc) & discs.isfinite().all(1)
        reach = (self.crop / 2 / max(self.scale) - discs[:, 2] / 2).clamp_min(0)
        distance = reach * torch.rand(n).sqrt()  # uniform over the disk of radius `reach`
        direction = torch.rand(n) * 2 * math.pi
        centre = discs[:, [1, 0]] + distance[:, None] * torch.stack([direction.cos(), direction.sin()], 1)
        on_disc = (centre - self.crop / 2).round().nan_to_num(0).long()
        on_disc = torch.minimum(on_disc.clamp_min(0), size - self.crop)
        return torch.where(chosen[:, None], on_disc, corner)

    def colour(self, x: torch.Tensor, n: int) -> torch.Tensor:
        def per_image(low, high):
            return _uniform(n, low, high).to(x.device).view(n, 1, 1, 1)

        brightness = per_image(1 - self.brightness, 1 + self.brightness)
        contrast = per_image(1 - self.contrast, 1 + self.contrast)
        saturation = per_image(1 - self.saturation, 1 + self.saturation)
        hue = _uniform(n, -self.hue, self.hue) * 2 * math.pi
        gamma = per_image(*self.gamma)

        x = (x * brightness).clamp_(0, 1)
        mean_luma = torch.einsum("c,nchw->n", _LUMA.to(x.device), x).view(n, 1, 1, 1) / x[0, 0].numel()
        x = ((x - mean_luma) * contrast + mean_luma).clamp_(0, 1)
        luma = torch.einsum("c,nchw->nhw", _LUMA.to(x.device), x).unsqueeze(1)
        x = ((x - luma) * saturation + luma).clamp_(0, 1)
        cos, sin, zero, one = torch.cos(hue), torch.sin(hue), torch.zeros(n), torch.ones(n)
        rotate = torch.stack(
            [torch.stack([one, zero, zero], 1), torch.stack([zero, cos, -sin], 1),
             torch.stack([zero, sin, cos], 1)], 1,
        )  # fmt: skip
        mix = (_YIQ_TO_RGB @ rotate @ _RGB_TO_YIQ).to(x.device)  # (n, 3, 3)
        x = torch.einsum("nij,njhw->nihw", mix, x).clamp_(0, 1)
        return x.pow_(gamma)

    def blurred(self, x: torch.Tensor, n: int) -> torch.Tensor:
        from torchvision.transforms.v2.functional import gaussian_blur

        chosen = torch.rand(n) < self.blur
        sigmas = _uniform(n, 0.1, 1.5)
        for i in chosen.nonzero().flatten().tolist():
            x[i] = gaussian_blur(x[i], [5, 5], [float(sigmas[i])])
        return x


class RandomCrop(FundusAugment):
    """A random square of `crop` pixels from each image, nothing else (for `--augment none`)."""

    def __init__(self, crop: int, crop_on_disc: float = 0.0):
        super().__init__(degrees=0, scale=(1.0, 1.0), translate=0.0, brightness=0.0, contrast=0.0,
                         saturation=0.0, hue=0.0, gamma=(1.0, 1.0), flip=False, crop=crop,
                         crop_on_disc=crop_on_disc)  # fmt: skip


def apply(transform, batch: torch.Tensor, discs: torch.Tensor | None = None) -> torch.Tensor:
    """Augment a uint8 batch (N, 3, H, W); each image gets its own draw. None leaves it unchanged.
    `discs` (N, 3): where each image's optic disc is, for transforms that crop around it."""
    if transform is None:
        return batch
    return transform(batch) if discs is None else transform(batch, discs)
