"""Reading a camera-sized JPEG for the model: decoded whole, or at a reduced DCT scale (what
`cropped_fundus` does since `read_image(..., at_least=)`), in one run; also how far apart the two results
are, in levels of 255 (per pixel, the largest of its three channels' differences).

    python benchmarks/decode_speed.py [--sizes 128,224,256] [--rounds 5] [FILES...]

Without FILES, the bundled sample's photographs (256 px) are enlarged to a 4096x3072 frame, as a
12-megapixel fundus camera writes them, with sensor-like noise so that they keep fine detail, and saved as
JPEG (quality 92). Variants are interleaved round by round and the median round counts.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time
from importlib import resources
from pathlib import Path

import numpy as np
from PIL import Image

from eyescreen.preprocess import DECODE_MARGIN, crop_to_field, cropped_fundus, read_image


def camera_sized(folder: Path, count: int = 6) -> list[Path]:
    """`count` of the sample's photographs, each in a 4096x3072 frame, as JPEG files in `folder`."""
    sample = resources.files("eyescreen") / "sample" / "images"
    names = sorted(p.name for p in sample.iterdir() if p.name.endswith(".jpg"))[:count]
    rng = np.random.default_rng(0)
    paths = []
    for name in names:
        with Image.open(sample / name) as im:
            eye = np.asarray(im.convert("RGB").resize((3072, 3072), Image.Resampling.BICUBIC), np.int16)
        eye = eye + rng.normal(0, 4, eye.shape[:2] + (1,)).astype(np.int16)
        frame = np.zeros((3072, 4096, 3), np.uint8)
        frame[:, 512:3584] = np.clip(eye, 0, 255)
        paths.append(folder / name)
        Image.fromarray(frame).save(paths[-1], quality=92)
    return paths


def whole_decode(path: Path, size: int) -> np.ndarray:
    """`cropped_fundus` as it was: the JPEG decoded at full size."""
    im = crop_to_field(read_image(path), path)
    return np.asarray(im.resize((size, size), Image.Resampling.BICUBIC))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("files", nargs="*", type=Path)
    parser.add_argument("--sizes", default="128,224,256")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        files = args.files or camera_sized(Path(tmp))
        with Image.open(files[0]) as im:
            frame = f"{im.width}x{im.height}"
        print(f"machine: {platform.processor() or platform.machine()}; {len(files)} JPEGs of {frame}; "
              f"decoded at no less than {DECODE_MARGIN}x the input side")  # fmt: skip
        print("| input px | whole decode (ms/image) | reduced decode (ms/image) | speed-up | mean difference | "
              "pixels > 2 levels apart | largest |")  # fmt: skip
        print("|---|---|---|---|---|---|---|")
        for size in map(int, args.sizes.split(",")):
            rounds = {"whole": [], "reduced": []}
            for _ in range(args.rounds):
                for name, fn in (("whole", whole_decode), ("reduced", cropped_fundus)):
                    start = time.perf_counter()
                    for path in files:
                        fn(path, size)
                    rounds[name].append((time.perf_counter() - start) / len(files) * 1000)
            # per pixel, the largest difference of its three channels
            diff = np.concatenate([np.abs(whole_decode(p, size).astype(int) - cropped_fundus(p, size)).max(2).ravel()
                                   for p in files])  # fmt: skip
            whole, reduced = statistics.median(rounds["whole"]), statistics.median(rounds["reduced"])
            print(f"| {size} | {whole:.0f} | {reduced:.0f} | {whole / reduced:.2f}x | {diff.mean():.2f} | "
                  f"{(diff > 2).mean():.2%} | {diff.max()} |")  # fmt: skip


if __name__ == "__main__":
    main()
