"""A trained model scored at other image sizes than it was trained at (validation by default).

    python benchmarks/test_resolution.py RUN [RUN ...] [--sizes 112 128 144 160 192] [--subset val]

The preprocessing is the checkpoint's (crop, enhancement) except its image size; the network's global
pooling takes any size. Macro-AUC does not depend on the temperature or decision rule, which were fitted
at the training size, so only AUCs are printed.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from eyescreen.checkpoint import load_model
from eyescreen.data import load_dataset, subset
from eyescreen.inference import predict_proba, resolve_device, resolve_precision
from eyescreen.metrics import classification_metrics
from eyescreen.preprocess import ImageCache, Preprocessing, load_stack


def scores(run: Path, sizes: list[int], split_name: str) -> tuple[int, dict[int, dict]]:
    """The size the run was trained at, and its AUCs at each of `sizes`."""
    device = resolve_device()
    model, meta = load_model(run / "best.safetensors", device)
    classes, norm = meta["classes"], meta["normalization"]
    part = subset(load_dataset(meta["data"], classes), meta["split"], split_name)
    base = Preprocessing(**meta["preprocessing"])
    out = {}
    for size in sizes:
        cache = ImageCache(dataclasses.replace(base, image_size=size))
        images, ok, errors = load_stack([r.path for r in part.records], cache, progress=False)
        for _, message in errors:
            print(f"  skipped: {message}")
        prob = predict_proba(
            model, images, norm["mean"], norm["std"], device, resolve_precision("auto", device)
        )
        m = classification_metrics(part.labels()[ok], prob, classes)
        out[size] = {"macro_auc": m["macro_auc"], **{c: m["per_class"][c]["roc_auc"] for c in classes}}
    return base.image_size, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--sizes", nargs="+", type=int, default=[112, 128, 144, 160, 192])
    parser.add_argument("--subset", default="val")
    args = parser.parse_args()
    print(f"| run ({args.subset}) | trained at | " + " | ".join(f"{s} px" for s in args.sizes) + " |")
    print("|---|---|" + "---|" * len(args.sizes))
    for run in args.runs:
        trained, result = scores(run, args.sizes, args.subset)
        cells = [f"{result[s]['macro_auc']:.3f}" for s in args.sizes]
        print(f"| {run.name} | {trained} | " + " | ".join(cells) + " |")
        for s in args.sizes:
            per_class = ", ".join(f"{k} {v:.3f}" for k, v in result[s].items() if k != "macro_auc")
            print(f"  {run.name} at {s} px: {per_class}")


if __name__ == "__main__":
    main()
