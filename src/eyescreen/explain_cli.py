"""`eyescreen explain`: choose what to explain (files, folders or a split) and how to load it."""

from __future__ import annotations

from functools import partial
from pathlib import Path

from .checkpoint import load_model
from .data import list_images, load_dataset, subset
from .explain import explain_items
from .inference import resolve_device
from .preprocess import ImageCache, Preprocessing, preprocess_image


def _named_inputs(inputs: list[str]) -> list[tuple[str, Path, None]]:
    """Files keep their name; files found in a folder are named by their path inside it."""
    items, seen = [], set()
    for given in map(Path, inputs):
        paths = list_images([given])
        for p in paths:
            name = p.relative_to(given).as_posix() if given.is_dir() else p.name
            while name in seen:  # the same name from two inputs: keep both outputs
                name = f"_{name}"
            seen.add(name)
            items.append((name, p, None))
    return items


def run_explain(args) -> dict:
    if bool(args.inputs) == bool(args.subset):
        raise ValueError("give image files/folders or --subset, not both and not neither")
    model, meta = load_model(args.checkpoint, resolve_device(args.device))
    prep = Preprocessing(**meta["preprocessing"])
    if args.subset:
        dataset = load_dataset(meta["data"], meta["classes"])
        part = subset(dataset, meta["split"], args.subset)
        items = [(r.key, r.path, r.label) for r in part.records]
        load = ImageCache(prep, args.cache_dir).get
    else:
        items = _named_inputs(args.inputs)
        load = partial(preprocess_image, prep=prep)
    return explain_items(items, model, meta, Path(args.out), load, method=args.method, target=args.target,
                         batch_size=args.batch_size, progress=not args.no_progress)  # fmt: skip
