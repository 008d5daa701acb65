"""How often same_eye finds an eye photographed again, on real photographs with a known answer: a sample
of a dataset's photographs is "photographed again" (turned, shifted, zoomed, lit and exposed otherwise,
saved as another JPEG), mixed with the whole dataset, and searched as `train` searches. Prints, per
strength of the change, the share of copies paired with their original (recall) and the pairs found
between a copy and any other photograph (false links).

    python benchmarks/same_eye_recall.py [--data MANIFEST] [--classes normal,dr,amd,glaucoma] [--sample 200]
        [--limit 0.9]

A simulated re-photograph is easier than a real one in some ways (the same lesions, the same day) and
harder in none that this models; the pairs found in ODIR-5K itself (RESULTS "The same eye photographed
again") are the real cases. Photographs too dull to compare (same_eye.MIN_DETAIL) count as misses.
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from pathlib import Path

from PIL import Image, ImageEnhance

from eyescreen import same_eye
from eyescreen.data import load_dataset, parse_classes
from eyescreen.preprocess import read_image
from eyescreen.same_eye import same_eye_pairs

ODIR = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "odir5k-256" / "manifest.csv"
STRENGTHS = {  # degrees, shift (share of the side), zoom, light (brightness/contrast), gamma
    "mild": (3, 0.02, 0.02, 0.10, 0.10),
    "moderate": (6, 0.04, 0.04, 0.20, 0.20),
    "strong": (8, 0.06, 0.06, 0.30, 0.30),
}


def photographed_again(im: Image.Image, strength: tuple, rng: random.Random) -> Image.Image:
    degrees, shift, zoom, light, gamma = strength
    w, h = im.size
    scale = 1 + rng.uniform(-zoom, zoom)
    out = im.resize((round(w * scale), round(h * scale)), Image.Resampling.BICUBIC)
    canvas = Image.new("RGB", (w, h))
    canvas.paste(out, ((w - out.width) // 2, (h - out.height) // 2))
    dx, dy = (round(rng.uniform(-shift, shift) * w) for _ in range(2))
    out = canvas.rotate(rng.uniform(-degrees, degrees), resample=Image.Resampling.BICUBIC, translate=(dx, dy))
    out = ImageEnhance.Brightness(out).enhance(1 + rng.uniform(-light, light))
    out = ImageEnhance.Contrast(out).enhance(1 + rng.uniform(-light, light))
    g = 1 + rng.uniform(-gamma, gamma)
    return out.point(lambda v: round(255 * (v / 255) ** g))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=ODIR)
    ap.add_argument("--classes", default="normal,dr,amd,glaucoma")
    ap.add_argument("--sample", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--limit", type=float, default=same_eye.LIMIT, help="the score taken for one eye")
    opts = ap.parse_args()
    records = load_dataset(opts.data, parse_classes(opts.classes)).records
    paths = [r.path for r in records]
    print(f"{len(paths)} photographs of {opts.data}; {opts.sample} photographed again at each strength\n")
    print("| strength | found with their original | missed (why) | false links (copy with another photograph) | "
          "seconds |\n|---|---|---|---|---|")  # fmt: skip
    for name, strength in STRENGTHS.items():
        rng = random.Random(opts.seed)
        chosen = rng.sample(range(len(paths)), opts.sample)
        with tempfile.TemporaryDirectory() as folder:
            copies = []
            for n, k in enumerate(chosen):
                copies.append(Path(folder) / f"again_{n}.jpg")
                again = photographed_again(read_image(paths[k]), strength, rng)
                again.save(copies[-1], quality=rng.randint(75, 90))
            start = time.perf_counter()
            found = same_eye_pairs(paths + copies, cache_dir=Path(folder) / "cache", limit=opts.limit)
            seconds = time.perf_counter() - start
            why = why_missed(paths + copies, chosen, Path(folder) / "cache", opts.limit)
        original = {len(paths) + n: k for n, k in enumerate(chosen)}
        hits = {i if j in original else j for i, j, _ in found
                if original.get(j) == i or original.get(i) == j}  # fmt: skip
        false = [(i, j) for i, j, _ in found if (i in original or j in original)
                 and original.get(j) != i and original.get(i) != j]  # fmt: skip
        print(f"| {name} | {len(hits)} / {opts.sample} | {opts.sample - len(hits)} ({why}) | {len(false)} | "
              f"{seconds:.0f} |")  # fmt: skip


def why_missed(paths: list, chosen: list[int], cache_dir: Path, limit: float) -> str:
    """Where the search loses the pairs: too little detail, not among the candidates, or scored under
    the limit (and how many of those score 0.80 or more)."""
    images, ok = same_eye.descriptors(paths, cache_dir)
    at = {k: n for n, k in enumerate(ok)}
    dull = same_eye.detail(images) < same_eye.MIN_DETAIL
    candidates = set(same_eye.candidates(images))
    floor = shortlist = under = near = 0
    for n, k in enumerate(chosen):
        i, j = at[k], at[len(paths) - len(chosen) + n]
        if dull[i] or dull[j]:
            floor += 1
        elif (i, j) not in candidates:
            shortlist += 1
        elif (score := same_eye.similarity(images[i], images[j])) < limit:
            under += 1
            near += score >= 0.8
    return (f"too dull {floor}, not a candidate {shortlist}, under {limit} {under}, "
            f"{near} of them 0.80 or more")  # fmt: skip


if __name__ == "__main__":
    main()
