"""Training and inference speed on this machine: a naive loop vs eyescreen's trainer, in one run.

naive:     decode + resize the JPEG every time (PIL, torchvision transforms), fp32, NCHW
eyescreen: uint8 images preprocessed once (the cache), channels_last, the precision `--precision auto` picks
           (bf16 autocast where the CPU has it and it measured faster, cpu_precision.py)

    python benchmarks/speed.py [--steps 8] [--data MANIFEST] [--compile]

Also prints the cached pipeline in the other precision (fp32 where auto picked bf16, bf16 where the CPU has it
and auto picked fp32), which splits the ratio into data path and arithmetic, and
with --compile the same trainer under torch.compile (compile time reported apart).

Prints images/s for a ResNet-18 training step at 224 px (batch 32), ms/image for inference at batch 1
and 32, predict + Grad-CAM at batch 1, and the ratios.
"""

from __future__ import annotations

import argparse
import platform
import time

import numpy as np
import torch
from PIL import Image
from torchvision import transforms

from eyescreen.cpu_precision import cpu_precision, cpu_supports_bf16
from eyescreen.data import load_dataset
from eyescreen.demo import sample_manifest
from eyescreen.explain import compute_cams
from eyescreen.inference import autocast, predict_proba, prepare_batch
from eyescreen.models import create_model
from eyescreen.preprocess import DEFAULT_MEAN, DEFAULT_STD, ImageCache, Preprocessing, load_stack

SIZE, BATCH = 224, 32


def naive_batches(paths, labels):
    tf = transforms.Compose([transforms.Resize((SIZE, SIZE)), transforms.ToTensor(),
                             transforms.Normalize(DEFAULT_MEAN, DEFAULT_STD)])  # fmt: skip
    i = 0
    while True:
        idx = [(i + k) % len(paths) for k in range(BATCH)]
        i += BATCH
        x = torch.stack([tf(Image.open(paths[j]).convert("RGB")) for j in idx])
        yield x, labels[idx]


def fast_batches(images, labels, channels_last):
    i = 0
    while True:
        idx = torch.arange(i, i + BATCH) % len(images)
        i += BATCH
        yield prepare_batch(images[idx], "cpu", DEFAULT_MEAN, DEFAULT_STD, channels_last), labels[idx]


def train_rate(batches, precision: str, channels_last: bool, steps: int, compile: bool = False) -> float:
    torch.manual_seed(0)
    model = create_model("resnet18", 4)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    if compile:
        model = torch.compile(model)
    device = torch.device("cpu")
    warm_start = time.perf_counter()
    for step in range(steps + 2):  # two warm-up steps (where torch.compile compiles)
        if step == 2:
            start = time.perf_counter()
            if compile:
                print(f"torch.compile: first two steps took {start - warm_start:.0f} s")
        x, y = next(batches)  # loading counts: it is part of the loop
        with autocast(device, precision):
            loss = torch.nn.functional.cross_entropy(model(x).float(), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return steps * BATCH / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--data", default=str(sample_manifest()))
    parser.add_argument("--compile", action="store_true", help="also time the trainer under torch.compile")
    args = parser.parse_args()
    precision = cpu_precision()  # what `--precision auto` runs on this CPU (measured where it has bf16)
    ds = load_dataset(args.data)
    paths = [r.path for r in ds.records]
    labels = torch.as_tensor(ds.labels()) % 4
    images, ok, _ = load_stack(paths, ImageCache(Preprocessing(SIZE)), progress=False)
    labels_ok = labels[ok]
    print(f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}, fast precision {precision}")  # fmt: skip

    naive = train_rate(naive_batches(paths, labels), "fp32", False, args.steps)
    fast = train_rate(fast_batches(images, labels_ok, True), precision, True, args.steps)
    print(f"training  naive (decode every step, fp32, NCHW): {naive:6.1f} img/s")
    print(
        f"training  eyescreen (cached uint8, channels_last, {precision}): {fast:6.1f} img/s   ratio {fast / naive:.2f}x"
    )
    other = {"bf16": "fp32", "fp32": "bf16" if cpu_supports_bf16() else None}[precision]
    if other:  # the precision auto did not choose, for the ratio that chose it
        rate = train_rate(fast_batches(images, labels_ok, True), other, True, args.steps)
        print(f"training  cached uint8, channels_last, {other}: {rate:6.1f} img/s   vs naive {rate / naive:.2f}x"
              f"   vs eyescreen {rate / fast:.2f}x")  # fmt: skip
    if args.compile:
        compiled = train_rate(
            fast_batches(images, labels_ok, True), precision, True, args.steps, compile=True
        )
        print(f"training  eyescreen + torch.compile: {compiled:6.1f} img/s   vs eager {compiled / fast:.2f}x")

    model = create_model("resnet18", 4).eval().to(memory_format=torch.channels_last)
    device = torch.device("cpu")
    for batch in (1, 32):
        x = images[:batch]
        predict_proba(model, x, DEFAULT_MEAN, DEFAULT_STD, device, precision, True)
        reps = 20 if batch == 1 else 4
        start = time.perf_counter()
        for _ in range(reps):
            predict_proba(model, x, DEFAULT_MEAN, DEFAULT_STD, device, precision, True, batch_size=batch)
        ms = (time.perf_counter() - start) * 1000 / (reps * batch)
        print(f"inference batch {batch:2d}: {ms:6.2f} ms/image ({1000 / ms:6.1f} img/s)")

    compute_cams(model, images[:1], DEFAULT_MEAN, DEFAULT_STD, "gradcam")  # warm-up
    start = time.perf_counter()
    for i in range(10):
        prob = predict_proba(model, images[i : i + 1], DEFAULT_MEAN, DEFAULT_STD, device, precision, True)
        compute_cams(model, images[i : i + 1], DEFAULT_MEAN, DEFAULT_STD, "gradcam", [int(np.argmax(prob))])
    print(f"predict + Grad-CAM, batch 1: {(time.perf_counter() - start) * 100:.1f} ms/image")


if __name__ == "__main__":
    main()
