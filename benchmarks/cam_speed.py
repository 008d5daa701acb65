"""Grad-CAM speed for ResNet-18 at 224 px on this machine: ms per image at batch 1 and in batches,
and prediction + Grad-CAM at batch 1 (the interactive case). Weights do not change the cost, so a
freshly initialised model is used.

    python benchmarks/cam_speed.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import platform
import time

import numpy as np
import torch

from eyescreen.explain import compute_cams
from eyescreen.inference import predict_proba
from eyescreen.models import create_model
from eyescreen.preprocess import DEFAULT_MEAN, DEFAULT_STD


def timed(fn, repeats: int) -> float:
    fn()  # warm-up
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--methods", default="gradcam,gradcam++,layercam,hirescam,eigencam")
    args = parser.parse_args()
    torch.manual_seed(0)
    model = create_model("resnet18", num_classes=4).eval()
    images = torch.from_numpy(np.random.default_rng(0).integers(0, 255, (32, 3, 224, 224), dtype=np.uint8))
    device = torch.device("cpu")
    print(
        f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}"
    )
    print("| method | batch 1 ms/image | batch 16 ms/image |")
    print("|---|---|---|")
    for method in args.methods.split(","):
        one = timed(
            lambda m=method: compute_cams(model, images[:1], DEFAULT_MEAN, DEFAULT_STD, m), args.repeats
        )
        batch = timed(lambda m=method: compute_cams(model, images[:16], DEFAULT_MEAN, DEFAULT_STD, m, batch_size=16),
                      max(1, args.repeats // 2)) / 16  # fmt: skip
        print(f"| {method} | {one * 1000:.1f} | {batch * 1000:.1f} |")

    def predict_and_explain():
        prob = predict_proba(model, images[:1], DEFAULT_MEAN, DEFAULT_STD, device)
        compute_cams(model, images[:1], DEFAULT_MEAN, DEFAULT_STD, "gradcam", [int(prob.argmax())])

    print(
        f"predict + Grad-CAM, batch 1: {timed(predict_and_explain, args.repeats) * 1000:.1f} ms (target <= 100 ms)"
    )


if __name__ == "__main__":
    main()
