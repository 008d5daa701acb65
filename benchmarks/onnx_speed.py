"""CPU inference: onnxruntime on the exported model vs PyTorch (fp32, and bf16 autocast where
supported), ResNet-18 at 224 px, batch 1 and 32, in one run; also the largest probability difference.

    python benchmarks/onnx_speed.py [--checkpoint CKPT]   # default: a freshly initialised ResNet-18

Variants are interleaved round by round and the median round counts, so a busy machine slows all alike.
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from eyescreen.checkpoint import load_model, save_model
from eyescreen.cpu_precision import cpu_supports_bf16
from eyescreen.export import export_onnx
from eyescreen.inference import autocast
from eyescreen.models import create_model


def fresh_checkpoint(folder: Path, size: int) -> Path:
    torch.manual_seed(0)
    path = folder / "resnet18.safetensors"
    meta = {"model": {"name": "resnet18", "args": {"num_classes": 4}}, "classes": ["a", "b", "c", "d"],
            "preprocessing": {"image_size": size}, "normalization": {"mean": [0.5] * 3, "std": [0.25] * 3}}  # fmt: skip
    save_model(path, create_model("resnet18", 4), meta)
    return path


def timed(fn, reps: int) -> float:
    start = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - start) / reps


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--checkpoint")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = Path(args.checkpoint) if args.checkpoint else fresh_checkpoint(Path(tmp), 224)
        onnx_path = export_onnx(ckpt, Path(tmp) / "model.onnx")
        model, meta = load_model(ckpt, "cpu")
        session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    model = model.eval().to(memory_format=torch.channels_last)
    size = meta["preprocessing"]["image_size"]
    device = torch.device("cpu")
    bf16 = cpu_supports_bf16()
    print(f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}, onnxruntime {ort.__version__}, {size} px")  # fmt: skip

    def torch_run(x, precision):
        with torch.inference_mode(), autocast(device, precision):
            return torch.softmax(model(x.contiguous(memory_format=torch.channels_last)).float(), 1)

    for batch in (1, 32):
        x = torch.randn(batch, 3, size, size)
        variants = {
            "pytorch fp32": lambda x=x: torch_run(x, "fp32"),
            "onnxruntime fp32": lambda x=x: session.run(None, {"image": x.numpy()})[0],
        }
        if bf16:
            variants["pytorch bf16"] = lambda x=x: torch_run(x, "bf16")
        diff = np.abs(variants["onnxruntime fp32"]() - variants["pytorch fp32"]().numpy()).max()
        reps = 20 if batch == 1 else 3
        rounds: dict[str, list[float]] = {name: [] for name in variants}
        for _ in range(args.rounds):
            for name, fn in variants.items():
                fn()
                rounds[name].append(timed(fn, reps))
        ms = {name: sorted(t)[len(t) // 2] * 1000 / batch for name, t in rounds.items()}
        base = ms["pytorch fp32"]
        print(f"\nbatch {batch} (max |p_onnx - p_torch| = {diff:.1e})")
        for name, v in ms.items():
            print(
                f"  {name:18s} {v:7.2f} ms/image  {1000 / v:7.1f} img/s   speed vs pytorch fp32 {base / v:.2f}x"
            )


if __name__ == "__main__":
    main()
