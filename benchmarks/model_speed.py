"""Training-step speed of registered models at given input sizes, side by side in one run, as ratios to
the first: what a model costs on this machine before a long run is started on it.

    python benchmarks/model_speed.py resnet18@128 resnet18-half@256 resnet18@256 [--batch 32] [--steps 6]
        [--precision fp32|bf16]

Each variant: a seeded model (4 classes), channels_last, AdamW, random inputs; two warm-up steps, then
`--steps` timed steps (forward, cross-entropy, backward, optimiser step), three rounds interleaved; the
median round's images per second. The network alone: the data pipeline (augmentation, which costs more at
a larger size) is not in it, so an epoch of `eyescreen train` takes longer than these numbers say.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch
import torch.nn.functional as F

from eyescreen.models import create_model


def images_per_second(model, size: int, batch: int, steps: int, precision: str) -> float:
    x = torch.randn(batch, 3, size, size).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 4, (batch,))
    optimizer = torch.optim.AdamW(model.parameters())
    for step in range(steps + 2):
        if step == 2:
            began = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss = F.cross_entropy(model(x).float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return batch * steps / (time.perf_counter() - began)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "variants", nargs="+", help="MODEL@SIZE, e.g. resnet18@128; the first is the reference"
    )
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    args = parser.parse_args()
    print(f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}, "
          f"batch {args.batch}, {args.precision}, {args.steps} steps x {args.rounds} rounds")  # fmt: skip
    models = {}
    for variant in args.variants:
        name, _, size = variant.partition("@")
        torch.manual_seed(0)
        models[variant] = (
            create_model(name, 4).to(memory_format=torch.channels_last).train(),
            int(size or 128),
        )
    speeds = {variant: [] for variant in models}
    for _ in range(args.rounds):  # interleaved: a machine that slows down slows every variant alike
        for variant, (model, size) in models.items():
            speeds[variant].append(images_per_second(model, size, args.batch, args.steps, args.precision))
    reference = statistics.median(speeds[args.variants[0]])
    for variant, measured in speeds.items():
        median = statistics.median(measured)
        params = sum(p.numel() for p in models[variant][0].parameters()) / 1e6
        print(f"{variant:>22}: {median:6.1f} img/s  ({params:.1f} M weights)  x{median / reference:.2f}")


if __name__ == "__main__":
    main()
