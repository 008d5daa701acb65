"""A learned both-eye head on a frozen single-eye model, against blending with the fellow eye.

The model's pooled features (the input of its last linear layer) are computed once for every eye of the
manifest (cached in RUN/features.npz); logistic regressions are fitted on the training eyes: `own` (the
eye's features) and `both` (the eye's and its fellow's; an eye without a fellow repeats its own). The L2
strength is chosen on validation macro-AUC. The baseline is the model's own output blended with the
fellow eye at the weight stored in the checkpoint. Validation is printed; the test split only with --test.

    python benchmarks/fellow_head.py --data MANIFEST RUN [RUN ...]
    python benchmarks/fellow_head.py --data MANIFEST --test RUN [RUN ...]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from scipy.special import softmax
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from eyescreen.checkpoint import load_model, read_meta
from eyescreen.data import load_dataset, read_manifest, read_split
from eyescreen.fellow import blend, fellow_of, stored_weight
from eyescreen.inference import autocast, prepare_batch, resolve_precision
from eyescreen.metrics import headline_metrics
from eyescreen.preprocess import ImageCache, Preprocessing, load_stack

STRENGTHS = (1e-3, 1e-2, 1e-1, 1.0)  # C of LogisticRegression: smaller = stronger L2


@torch.inference_mode()
def pooled_features(
    checkpoint: Path, paths: list[Path], batch_size: int = 64
) -> tuple[np.ndarray, np.ndarray]:
    """(features [N, D] of the readable images, their indices) under the checkpoint's preprocessing."""
    model, meta = load_model(checkpoint)
    head = model.get_submodule(model.head_layer)
    cache = ImageCache(Preprocessing(image_size=meta["preprocessing"]["image_size"],
                                     enhance=meta["preprocessing"]["enhance"]))  # fmt: skip
    norm, device = meta["normalization"], torch.device("cpu")
    precision = resolve_precision("auto", device)
    seen: list[torch.Tensor] = []
    images, ok, _ = load_stack(paths, cache, progress=False)  # unreadable images are left out
    hook = head.register_forward_pre_hook(lambda module, inputs: seen.append(inputs[0].float()))
    try:
        for start in range(0, len(images), batch_size):
            x = prepare_batch(images[start : start + batch_size], device, norm["mean"], norm["std"], True)
            with autocast(device, precision):
                model(x)
    finally:
        hook.remove()
    return torch.cat(seen).numpy(), np.array(ok)


def features_of(run: Path, records: list) -> dict[str, np.ndarray]:
    """Pooled features of `records` (every eye of the manifest) by key, cached in RUN/features.npz."""
    cached = run / "features.npz"
    if cached.exists():
        data = np.load(cached, allow_pickle=False)
        return dict(zip(data["keys"].tolist(), data["features"], strict=True))
    features, ok = pooled_features(run / "best.safetensors", [r.path for r in records])
    keys = np.array([records[i].key for i in ok])
    np.savez(cached, keys=keys, features=features)
    return dict(zip(keys.tolist(), features, strict=True))


def compare(run: Path, manifest: Path, test: bool) -> dict:
    meta = read_meta(run / "best.safetensors")
    classes = meta["classes"]
    dataset = load_dataset(manifest, classes)
    split = read_split(run / "split.csv", dataset)
    every_eye = read_manifest(manifest)  # labelled or not: a fellow may have no selected class
    feats = features_of(run, every_eye)
    fellows = fellow_of(dataset.records, every_eye)
    model, _ = load_model(run / "best.safetensors")
    head = model.get_submodule(model.head_layer)
    weight, bias = head.weight.detach().numpy(), head.bias.detach().numpy()
    weight_fellow = stored_weight(meta.get("calibration"))

    def part(name):
        rows = [i for i, r in enumerate(dataset.records) if split[r.key] == name and r.key in feats]
        own = np.stack([feats[dataset.records[i].key] for i in rows])
        has = np.array([fellows[i] is not None and fellows[i].key in feats for i in rows])
        other = np.stack(
            [
                feats[fellows[i].key] if h else feats[dataset.records[i].key]
                for i, h in zip(rows, has, strict=True)
            ]
        )
        y = dataset.labels()[rows]
        return own, other, has, y

    parts = {name: part(name) for name in ("train", "val", "test")}
    inputs = {
        "own": {k: v[0] for k, v in parts.items()},
        "both": {k: np.hstack([v[0], v[1]]) for k, v in parts.items()},
    }
    scored = ("val", "test") if test else ("val",)
    out = {}
    for name in scored:
        own, other, has, y = parts[name]
        p_own, p_other = softmax(own @ weight.T + bias, axis=1), softmax(other @ weight.T + bias, axis=1)
        out[f"model {name}"] = headline_metrics(y, p_own)["macro_auc"]
        out[f"blend {name}"] = headline_metrics(y, blend(p_own, p_other, has, weight_fellow))["macro_auc"]
    for head_name, x in inputs.items():
        scaler = StandardScaler().fit(x["train"])
        fits = {}
        for c in STRENGTHS:
            clf = LogisticRegression(C=c, max_iter=2000).fit(scaler.transform(x["train"]), parts["train"][3])
            fits[c] = (
                headline_metrics(parts["val"][3], clf.predict_proba(scaler.transform(x["val"])))["macro_auc"],
                clf,
            )
        c, (val_auc, clf) = max(fits.items(), key=lambda kv: kv[1][0])
        out[f"{head_name} C"] = c
        out[f"{head_name} val"] = val_auc
        if test:
            out[f"{head_name} test"] = headline_metrics(
                parts["test"][3], clf.predict_proba(scaler.transform(x["test"]))
            )["macro_auc"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--test", action="store_true", help="score the test split too (once per recipe)")
    ap.add_argument("runs", nargs="+", type=Path)
    opts = ap.parse_args()
    for run in opts.runs:
        row = compare(run, opts.data, opts.test)
        print(run.name, " ".join(f"{k}={v:.4g}" for k, v in row.items()), flush=True)


if __name__ == "__main__":
    main()
