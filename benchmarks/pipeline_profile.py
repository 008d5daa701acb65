"""Where a training step's time goes with fundus augmentation, before and after batching it.

before: the earlier pipeline, torchvision v2 transforms applied image by image (flips, RandomAffine,
        ColorJitter, gamma) on the cached uint8 tensors
after:  eyescreen.augment.FundusAugment, the same kinds of change drawn per image, done for the
        whole batch at once
none:   no augmentation (the ceiling)

    python benchmarks/pipeline_profile.py [--steps 6] [--image-size 224] [--data MANIFEST]

For each variant: a torch.profiler trace of a few ResNet-18 training steps (batch 32, channels_last,
bf16 autocast where supported) split into augment / normalise / forward / backward+step, the top
operators by self CPU time, then images/s without the profiler and the ratios.
"""

from __future__ import annotations

import argparse
import platform
import time

import torch
from torch.profiler import ProfilerActivity, profile, record_function
from torchvision.transforms import v2

from eyescreen import augment
from eyescreen.cpu_precision import cpu_precision
from eyescreen.data import load_dataset
from eyescreen.demo import sample_manifest
from eyescreen.inference import autocast, prepare_batch
from eyescreen.models import create_model
from eyescreen.preprocess import DEFAULT_MEAN, DEFAULT_STD, ImageCache, Preprocessing, load_stack

BATCH = 32
STAGES = ("augment", "normalise", "forward", "backward+step")


class RandomGamma(torch.nn.Module):
    def __init__(self, low: float, high: float):
        super().__init__()
        self.low, self.high = low, high

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return v2.functional.adjust_gamma(image, float(torch.empty(1).uniform_(self.low, self.high)))


def per_image_fundus():
    """The augmentation eyescreen used before batching (same ranges as FundusAugment's defaults)."""
    each = v2.Compose(
        [
            v2.RandomHorizontalFlip(),
            v2.RandomVerticalFlip(),
            v2.RandomAffine(degrees=180, scale=(0.9, 1.1), translate=(0.03, 0.03)),
            v2.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.1, hue=0.02),
            RandomGamma(0.8, 1.25),
        ]
    )
    return lambda batch: torch.stack([each(image) for image in batch])


def step_fn(images, labels, transform, precision):
    torch.manual_seed(0)
    model = create_model("resnet18", 4).to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), 1e-3)
    device = torch.device("cpu")
    position = [0]

    def step():
        idx = torch.arange(position[0], position[0] + BATCH) % len(images)
        position[0] += BATCH
        with record_function("augment"):
            x = augment.apply(transform, images[idx])
        with record_function("normalise"):
            x = prepare_batch(x, device, DEFAULT_MEAN, DEFAULT_STD, True)
        with record_function("forward"), autocast(device, precision):
            loss = torch.nn.functional.cross_entropy(model(x).float(), labels[idx])
        with record_function("backward+step"):
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

    return step


def profile_variant(name, step, steps: int) -> None:
    step()  # warm-up
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            step()
    events = {e.key: e for e in prof.key_averages()}
    total = sum(events[s].cpu_time_total for s in STAGES if s in events)
    shares = "  ".join(
        f"{s} {events[s].cpu_time_total / steps / 1000:6.0f} ms ({events[s].cpu_time_total / total:4.0%})"
        for s in STAGES
        if s in events
    )
    print(f"\n[{name}] per step: {shares}")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=8, max_name_column_width=40))


def rates(steps_by_name: dict, steps: int, rounds: int = 3) -> dict[str, float]:
    """images/s per variant: rounds interleave the variants, so a busy machine slows all alike; the
    median round counts."""
    for step in steps_by_name.values():
        step()  # warm-up
    seconds = {name: [] for name in steps_by_name}
    for _ in range(rounds):
        for name, step in steps_by_name.items():
            start = time.perf_counter()
            for _ in range(steps):
                step()
            seconds[name].append(time.perf_counter() - start)
    return {name: steps * BATCH / sorted(s)[len(s) // 2] for name, s in seconds.items()}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--data", default=str(sample_manifest()))
    args = parser.parse_args()
    precision = cpu_precision()  # as `--precision auto` trains
    ds = load_dataset(args.data)
    images, ok, _ = load_stack(
        [r.path for r in ds.records], ImageCache(Preprocessing(args.image_size)), False
    )
    labels = (torch.as_tensor(ds.labels()) % 4)[ok]
    print(f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}, {precision}, {args.image_size} px, batch {BATCH}")  # fmt: skip
    variants = {
        "before: per-image torchvision": per_image_fundus(),
        "after: batched FundusAugment": augment.build("fundus", args.image_size),
        "none": None,
    }
    for name, transform in variants.items():
        profile_variant(name, step_fn(images, labels, transform, precision), args.steps)
    measured = rates(
        {name: step_fn(images, labels, t, precision) for name, t in variants.items()}, args.steps
    )
    print()
    for name, r in measured.items():
        print(f"training {name:32s} {r:6.1f} img/s")
    before, after, ceiling = measured.values()
    print(f"after / before: {after / before:.2f}x;  after / no augmentation: {after / ceiling:.2f}")


if __name__ == "__main__":
    main()
