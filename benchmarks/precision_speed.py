"""fp32 or bf16, NCHW or channels_last: ResNet-18 training steps and inference on this CPU, the four
variants in one run, as ratios to fp32 NCHW; then what `--precision auto` picks here (cpu_precision.py)
and the probe's own timings.

    python benchmarks/precision_speed.py [--sizes 128 224] [--steps 5] [--batch 32]

Synthetic inputs (the speed of the arithmetic, not of the data path: benchmarks/speed.py has that).
"""

from __future__ import annotations

import argparse
import time

import torch
import torchvision

from eyescreen.cpu_precision import cpu_name, cpu_supports_bf16, probe

VARIANTS = [("fp32", False), ("fp32", True), ("bf16", False), ("bf16", True)]


def rate(size: int, precision: str, channels_last: bool, steps: int, batch: int, train: bool) -> float:
    """Images per second over `steps` steps after two warm-up steps."""
    torch.manual_seed(0)
    net = torchvision.models.resnet18(num_classes=4)
    x, y = torch.randn(batch, 3, size, size), torch.randint(0, 4, (batch,))
    if channels_last:
        net, x = net.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(net.parameters())
    net.train(train)

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            if not train:
                with torch.inference_mode():
                    return net(x)
            loss = torch.nn.functional.cross_entropy(net(x).float(), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    step(), step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return batch * steps / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[128, 224])
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--batch", type=int, default=32)
    opts = ap.parse_args()
    print(f"cpu: {cpu_name()}, {torch.get_num_threads()} threads, torch {torch.__version__}, "
          f"native bf16: {cpu_supports_bf16()}")  # fmt: skip
    print(
        "\n| input | step | "
        + " | ".join(f"{p}{' channels_last' if cl else ''}" for p, cl in VARIANTS)
        + " |"
    )
    print("|---|---|" + "---|" * len(VARIANTS))
    for size in opts.sizes:
        for train in (True, False):
            rates = [rate(size, p, cl, opts.steps, opts.batch, train) for p, cl in VARIANTS]
            cells = [f"{r:.1f} img/s ({r / rates[0]:.2f}x)" for r in rates]
            print(f"| {size} px | {'training' if train else 'inference'} | " + " | ".join(cells) + " |")
    if cpu_supports_bf16():
        seconds = probe()
        print(f"\nprobe (cpu_precision.probe): fp32 {seconds['fp32']:.3f} s, bf16 {seconds['bf16']:.3f} s a step: "
              f"bf16 at {seconds['fp32'] / seconds['bf16']:.2f}x fp32's speed")  # fmt: skip


if __name__ == "__main__":
    main()
