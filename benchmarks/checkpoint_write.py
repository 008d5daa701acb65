"""What the checkpoint writes after each epoch cost, per model, in one run: the time an epoch's own clock
(metrics.csv `seconds`) leaves out.

After every epoch `train` writes `last.safetensors`, `resume.pt` (model, optimiser, scheduler, random
state) and, when validation improved, `best.safetensors`, each atomically (temporary file, fsync,
rename). This times those three writes, as train makes them, for each model with AdamW's state filled
in, and splits `resume.pt` into serialisation (torch.save into memory) and the rest.

    python benchmarks/checkpoint_write.py [--models resnet18 resnet34 resnet50] [--repeats 3]
"""

from __future__ import annotations

import argparse
import io
import platform
import tempfile
import time
from pathlib import Path

import torch

from eyescreen.checkpoint import save_model, save_state
from eyescreen.models import create_model


def trained_state(name: str):
    """A model and an AdamW optimiser after one step, so the optimiser holds its two moments."""
    model = create_model(name, num_classes=4)
    optimizer = torch.optim.AdamW(model.parameters())
    model(torch.randn(2, 3, 64, 64)).sum().backward()
    optimizer.step()
    return model, optimizer


def fastest(repeats: int, write, *args) -> float:
    """Seconds of the fastest of `repeats` calls of write(*args)."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        write(*args)
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["resnet18", "resnet34", "resnet50"])
    ap.add_argument("--repeats", type=int, default=3, help="the fastest of this many writes is reported")
    opts = ap.parse_args()
    print(
        f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}"
    )
    print(
        "| model | best.safetensors | last.safetensors | resume.pt (of which serialising) | all three | MiB written |"
    )
    print("|---|---|---|---|---|---|")
    for name in opts.models:
        model, optimizer = trained_state(name)
        state = {"model": model.state_dict(), "optimizer": optimizer.state_dict()}
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp)
            r = opts.repeats
            best = fastest(r, save_model, out / "best.safetensors", model, {})
            last = fastest(r, save_model, out / "last.safetensors", model, {})
            resume = fastest(r, save_state, out / "resume.pt", state)
            serialise = fastest(r, torch.save, state, io.BytesIO())
            mib = sum(f.stat().st_size for f in out.iterdir()) / 2**20
        print(f"| {name} | {best:.2f} s | {last:.2f} s | {resume:.2f} s ({serialise:.2f} s) | "
              f"{best + last + resume:.2f} s | {mib:.0f} |")  # fmt: skip


if __name__ == "__main__":
    main()
