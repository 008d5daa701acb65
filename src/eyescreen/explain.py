"""Class activation maps through pytorch-grad-cam: maps, overlays on the fundus, and an HTML gallery.

The library does the CAM mathematics and removes its hooks on exit. What it lacks, done here:
* it switches the model to eval mode and needs gradients but restores neither: `_explainable`
  puts back the model's mode and every parameter's `requires_grad`;
* overlays masked to the fundus field of view, with a colour bar and the decision in the title.
"""

from __future__ import annotations

import contextlib
import html
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from .batch_output import BatchOutput, keep_problems, print_problems
from .models import cam_target, takes_both_eyes
from .preprocess import field_of_view, load_views, normalize, read_all

METHODS = {
    "gradcam": "GradCAM",
    "gradcam++": "GradCAMPlusPlus",
    "layercam": "LayerCAM",
    "hirescam": "HiResCAM",
    "scorecam": "ScoreCAM",
    "eigencam": "EigenCAM",  # class-agnostic: first principal component of the activations
}


def list_methods() -> list[str]:
    return list(METHODS)


@contextlib.contextmanager
def _explainable(model: nn.Module) -> Iterator[nn.Module]:
    """Eval mode with gradients enabled for the duration; the previous state is restored after."""
    was_training = model.training
    flags = [(p, p.requires_grad) for p in model.parameters()]
    try:
        for p, _ in flags:
            p.requires_grad_(True)
        model.eval()
        with torch.enable_grad():
            yield model
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
        model.train(was_training)


def compute_cams(
    model: nn.Module,
    images: torch.Tensor,
    mean,
    std,
    method: str = "gradcam",
    targets: list[int] | None = None,
    batch_size: int = 16,
) -> np.ndarray:
    """CAMs (N, H, W) in [0, 1] for uint8 images (N, 3, H, W); `targets` are class indices
    (None: each image's predicted class)."""
    import pytorch_grad_cam
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    if method not in METHODS:
        raise ValueError(f"unknown CAM method {method!r}; available: {', '.join(METHODS)}")
    from .ensemble import Ensemble

    if isinstance(model, Ensemble):
        return _ensemble_cams(model, images, mean, std, method, targets, batch_size)
    cam_class = getattr(pytorch_grad_cam, METHODS[method])
    device = next(model.parameters()).device
    out = []
    with _explainable(model), cam_class(model=model, target_layers=[cam_target(model)]) as cam:
        if method == "scorecam":
            cam.batch_size = batch_size
        for start in range(0, len(images), batch_size):
            x = normalize(images[start : start + batch_size].to(device), mean, std)
            chunk_targets = None
            if targets is not None:
                chunk_targets = [ClassifierOutputTarget(int(t)) for t in targets[start : start + batch_size]]
            maps = cam(input_tensor=x, targets=chunk_targets)
            out.append(np.clip(np.nan_to_num(maps.astype(np.float32)), 0.0, 1.0))
    return np.concatenate(out) if out else np.zeros((0,) + tuple(images.shape[-2:]), np.float32)


def _ensemble_cams(model, images, mean, std, method, targets, batch_size) -> np.ndarray:
    """An ensemble's maps: each member's map for the class the ensemble names (or the target given),
    averaged, rescaled to [0, 1] as the library rescales one. Hooking all the members' layers in one
    library call is not an option: it pairs layers with gradients by the order the backward pass reaches
    them, which parallel members do not fix."""
    if targets is None:
        from .inference import predict_proba

        device = next(model.parameters()).device
        targets = list(predict_proba(model, images, mean, std, device).argmax(1))
    maps = np.mean(
        [compute_cams(m, images, mean, std, method, targets, batch_size) for m in model.members], 0
    )
    return _rescaled(maps, axes=(1, 2))


def _rescaled(maps: np.ndarray, axes: tuple[int, int]) -> np.ndarray:
    """Each map to [0, 1], as the library rescales one (an all-zero map, an absent eye's, stays 0)."""
    low, high = maps.min(axis=axes, keepdims=True), maps.max(axis=axes, keepdims=True)
    return ((maps - low) / np.maximum(high - low, 1e-7)).astype(np.float32)


def pair_decisions(model: nn.Module, images: torch.Tensor, mask: torch.Tensor, mean, std) -> list[int]:
    """The class a both-eye model's patient logits name, per patient."""
    device = next(model.parameters()).device
    b, _, _, h, w = images.shape
    x = normalize(images.to(device).flatten(0, 1), mean, std).view(b, 2, 3, h, w)
    with torch.inference_mode():
        return [int(k) for k in model(x, mask.to(device))[1].argmax(1)]


class _PatientDecision(nn.Module):
    """pytorch-grad-cam expects one image tensor in and one logit row per input: present a both-eye
    model as [B, 6, H, W] -> patient logits [B, K]. The CAM layer inside the shared backbone sees the
    present eyes as one batch, so the library returns one map per present eye."""

    def __init__(self, model: nn.Module, mask: torch.Tensor):
        super().__init__()
        self.model, self.mask = model, mask

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        return self.model(x.view(b, 2, 3, h, w), self.mask)[1]


def compute_pair_cams(model: nn.Module, images: torch.Tensor, mask: torch.Tensor, mean, std,
                      method: str = "gradcam", targets: list[int] | None = None) -> np.ndarray:  # fmt: skip
    """Per-eye maps [B, 2, H, W] in [0, 1] for a both-eye model's patient decision; absent eyes are 0.
    Maps of the left eye are mirrored back, since the model sees that eye mirrored."""
    import pytorch_grad_cam
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    if method == "scorecam":
        raise ValueError("scorecam perturbs the input image by image and does not apply to both-eye models")
    from .ensemble import Ensemble

    if isinstance(model, Ensemble):  # each member's maps for the ensemble's target, averaged per eye
        if targets is None:
            targets = pair_decisions(model, images, mask, mean, std)
        maps = np.mean(
            [compute_pair_cams(m, images, mask, mean, std, method, targets) for m in model.members], 0
        )
        return _rescaled(maps, axes=(2, 3))
    cam_class = getattr(pytorch_grad_cam, METHODS[method])
    device = next(model.parameters()).device
    b, _, _, h, w = images.shape
    x = normalize(images.to(device).flatten(0, 1), mean, std).view(b, 6, h, w)
    wrapper = _PatientDecision(model, mask.to(device))
    chosen = None if targets is None else [ClassifierOutputTarget(int(t)) for t in targets]
    with _explainable(model), cam_class(model=wrapper, target_layers=[cam_target(model)]) as cam:
        maps = cam(input_tensor=x, targets=chosen)  # one map per present eye, in batch order
    out = np.zeros((b * 2, h, w), dtype=np.float32)
    out[mask.flatten().cpu().numpy()] = np.clip(np.nan_to_num(maps), 0.0, 1.0)
    out = out.reshape(b, 2, h, w)
    if getattr(model, "mirror_left", False):
        out[:, 1] = out[:, 1, :, ::-1]
    return out


def overlay_rgb(image: np.ndarray, cam: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """The map in the 'jet' colour map blended over a uint8 fundus (H, W, 3), only inside the field of
    view so the black border stays black: a plain picture for pages and reports."""
    from matplotlib import colormaps

    heat = colormaps["jet"](np.clip(cam, 0.0, 1.0))[..., :3]
    base = image.astype(np.float32) / 255.0
    inside = field_of_view(image)[..., None]
    out = np.where(inside, (1 - alpha) * base + alpha * heat, base)
    return (out * 255.0 + 0.5).astype(np.uint8)


def save_overlay(images, cams, path: Path, title: str, names=("fundus",)) -> None:
    """Each fundus and, beside it, its map over it (masked to the field of view) with a colour bar.
    One image (single eye) or several side by side (right and left eye of a patient)."""
    import matplotlib.pyplot as plt

    fig = overlay_figure(images, cams, title, names)
    fig.savefig(path, dpi=90)
    plt.close(fig)


def overlay_figure(images, cams, title: str, names=("fundus",)):
    """The figure `save_overlay` writes: axes fundus, map, colour bar for each eye in turn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if isinstance(images, np.ndarray) and images.ndim == 3:
        images, cams = [images], [cams]
    # the colour bar gets its own narrow column, so that the fundus and its map are drawn the same size
    # (a reader compares places between them)
    fig, axes = plt.subplots(1, 3 * len(images), figsize=(8 * len(images), 4.3), squeeze=False,
                             gridspec_kw={"width_ratios": [1, 1, 0.05] * len(images)})  # fmt: skip
    for k, (image, cam, name) in enumerate(zip(images, cams, names, strict=True)):
        left, right, bar = axes[0, 3 * k : 3 * k + 3]
        left.imshow(image)
        left.set_title(name)
        if cam is None:  # an eye without a photograph or without a map
            right.set_title("no image")
        else:
            right.imshow(image)
            shown = np.ma.masked_where(~field_of_view(image), cam)
            im = right.imshow(shown, cmap="jet", alpha=0.45, vmin=0, vmax=1)
            right.set_title("where the model looked")
            fig.colorbar(im, cax=bar, label="relative importance")
        if cam is None:
            bar.axis("off")
        left.axis("off")
        right.axis("off")
    lines = textwrap.wrap(title, width=85 * len(images))  # about what one fundus and its map span
    fig.suptitle("\n".join(lines), fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.94 - 0.04 * (len(lines) - 1)))
    return fig


def gallery(rows: list[dict], classes: list[str], path: Path, method: str, unit: str = "images") -> None:
    """index.html: images grouped by true class, correct and misclassified apart (or by predicted
    class when the truth is unknown)."""
    sections: dict[str, list[dict]] = {}
    for r in rows:
        if r.get("true"):
            kind = "correct" if r["true"] == r["predicted"] else "misclassified"
            key = f"true {r['true']} — {kind}"
        else:
            key = f"predicted {r['predicted']}"
        sections.setdefault(key, []).append(r)
    order = sorted(sections, key=lambda k: (k.split(" — ")[0], "misclassified" in k))
    parts = [f"<h1>eyescreen explanations ({html.escape(method)})</h1>",
             f"<p>{len(rows)} {html.escape(unit)}; classes: {html.escape(', '.join(classes))}</p>"]  # fmt: skip
    for key in order:
        parts.append(f"<h2>{html.escape(key)} ({len(sections[key])})</h2><div class='grid'>")
        for r in sections[key]:
            caption = f"{r['name']}: predicted {r['predicted']} ({float(r['probability']):.2f})"
            if r.get("true"):
                caption += f", true {r['true']}"
            url = html.escape(quote(r["overlay"]))  # file names may hold '#', '?' or spaces
            warning = f"<br><b class='warn'>{html.escape(r['warning'])}</b>" if r.get("warning") else ""
            parts.append(
                f"<figure><a href='{url}'><img loading='lazy' src='{url}'></a>"
                f"<figcaption>{html.escape(caption)}{warning}</figcaption></figure>"
            )
        parts.append("</div>")
    style = (
        "body{font-family:system-ui,sans-serif;margin:1.5em}.grid{display:flex;flex-wrap:wrap;gap:10px}"
        "figure{margin:0;width:360px}img{width:360px}figcaption{font-size:12px}.warn{color:#a33}"
    )
    path.write_text(
        f"<!doctype html><html><head><meta charset='utf-8'><title>eyescreen explanations</title>"
        f"<style>{style}</style></head><body>{''.join(parts)}</body></html>"
    )


def as_predicted(prob: np.ndarray, meta: dict) -> tuple[np.ndarray, np.ndarray]:
    """The probabilities and classes `predict` would show: temperature-scaled, then the checkpoint's
    decision rule."""
    from .calibrate import apply_temperature, class_weights, decide

    calibration = meta.get("calibration") or {}
    scaled = apply_temperature(prob, calibration.get("temperature", 1.0))
    return scaled, decide(scaled, class_weights(calibration))


def decision_text(prob: np.ndarray, k: int, classes: list[str]) -> str:
    """The overlay's decision: the class named, and, where the decision rule (which weights rare diseases
    up) names another than the most probable, that one too, as the web page says it."""
    text = f"predicted {classes[k]} (p={prob[k]:.2f})"
    top = int(np.argmax(prob))
    if top != k:
        text += f" by the decision rule; most probable {classes[top]} (p={prob[top]:.2f})"
    return text


def prepare_output(out_dir: Path, classes: list[str], target: str) -> None:
    """Check --target before any work, and make the folders for the overlays and the raw maps."""
    if target != "predicted" and target not in classes:
        raise ValueError(f"--target {target!r}: use 'predicted' or one of {', '.join(classes)}")
    for sub in ("overlays", "maps"):
        (out_dir / sub).mkdir(parents=True, exist_ok=True)


IMAGE_FIELDS = ["name", "file", "true", "predicted", "probability", "target", "overlay", "map", "warning"]
PATIENT_FIELDS = [
    "name",
    "right_file",
    "left_file",
    "true",
    "predicted",
    "probability",
    "target",
    "overlay",
    "map",
    "warning",
]


def explain_items(
    items: list[tuple],
    model: nn.Module,
    meta: dict,
    out_dir: Path,
    load,
    method: str = "gradcam",
    target: str = "predicted",
    batch_size: int = 16,
    progress: bool = True,
    view=None,
    checkpoint: str | Path | None = None,
    resume: bool = False,
) -> dict:
    """Explain items in streamed chunks: overlay PNG + raw .npy each, an index CSV and the gallery.

    Items are (name, path, true label or None); for a both-eye model, (patient, (right path | None,
    left path | None), true label or None), and each patient gets one side-by-side overlay (right eye,
    then left) for the patient-level decision. `load(path) -> (uint8 (H, W, 3), warnings)` raises
    ImageError for bad files (files are read on threads, `read_all`; warnings go in a row's `warning`);
    `view(path)`, when given, is the picture the map is drawn over (the photograph before structure
    enhancement, which is what a clinician reads). The index is written a row at a time and
    flushed a chunk at a time; `resume` keeps the items an interrupted run of the same `checkpoint`,
    method and target explained."""
    work = _Work(model, meta, out_dir, load, method, target, view, batch_size)
    if takes_both_eyes(meta["model"]):
        return _stream(items, work, _explain_pairs, PATIENT_FIELDS, "patients", progress, checkpoint, resume)
    return _stream(items, work, _explain_images, IMAGE_FIELDS, "images", progress, checkpoint, resume)


@dataclass
class _Work:
    """What every chunk of an explain job shares."""

    model: nn.Module
    meta: dict
    out_dir: Path
    load: object
    method: str
    target: str
    view: object
    batch_size: int

    def targets(self, pred: np.ndarray) -> np.ndarray:
        classes = self.meta["classes"]
        return pred if self.target == "predicted" else np.full(len(pred), classes.index(self.target))


def _stream(items, work: _Work, explain_chunk, fields, unit: str, progress, checkpoint, resume) -> dict:
    """The explain job's loop: skip what an earlier run wrote (with `resume`), explain the rest a chunk at
    a time, write each row as its overlay is saved, then the gallery and the list of unreadable files.
    `explain_chunk(chunk, work, failures)` yields the rows of one chunk."""
    classes = work.meta["classes"]
    prepare_output(work.out_dir, classes, work.target)
    index = BatchOutput(work.out_dir / "explanations.csv", fields, checkpoint, resume, key="name",
                        settings={"method": work.method, "target": work.target})  # fmt: skip
    with index:
        rows, failures = index.kept_rows, []
        warnings = [row["warning"] for row in rows if row.get("warning")]  # a resumed job's too
        items = [item for item in items if item[0] not in index.done]
        bar = tqdm(total=len(items), desc=f"explaining {unit} ({work.method})", disable=not progress)
        for start in range(0, len(items), work.batch_size):
            chunk = items[start : start + work.batch_size]
            for row in explain_chunk(chunk, work, failures):
                rows.append(row)
                index.write([row[f] for f in fields])
                warnings += [row["warning"]] if row["warning"] else []
            index.flush()
            bar.update(len(chunk))
        bar.close()
    gallery(rows, classes, work.out_dir / "index.html", work.method, unit)
    keep_problems("could not read", [message for _, message in failures], work.out_dir / "unreadable.txt")
    print_problems("warning", warnings, f"the 'warning' column of {work.out_dir / 'explanations.csv'}")
    return {"explained": len(rows), "failed": failures, "index": work.out_dir / "index.html"}


def _explain_images(chunk, work: _Work, failures) -> Iterator[dict]:
    """Overlays and maps of one chunk of single images; their index rows."""
    from .inference import predict_proba

    classes, norm = work.meta["classes"], work.meta["normalization"]
    device = next(work.model.parameters()).device
    readable, arrays, notes = [], [], []
    for (name, path, truth), (result, error) in zip(chunk, read_all(work.load, [p for _, p, _ in chunk]),
                                                    strict=True):  # fmt: skip
        if error is None:
            arrays.append(result[0])
            readable.append((name, path, truth))
            notes.append("; ".join(result[1]))
        else:
            failures.append((path, error))
    if not arrays:
        return
    images = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
    prob, pred = as_predicted(predict_proba(work.model, images, norm["mean"], norm["std"], device), work.meta)
    targets = work.targets(pred)
    cams = compute_cams(
        work.model, images, norm["mean"], norm["std"], work.method, list(targets), work.batch_size
    )
    for (name, path, truth), image, cam, p, k, t, note in zip(
        readable, arrays, cams, prob, pred, targets, notes, strict=True
    ):
        stem = Path(name).with_suffix("").as_posix().replace("/", "__")
        np.save(work.out_dir / "maps" / f"{stem}.npy", cam.astype(np.float16))
        title = f"{decision_text(p, k, classes)}; map for {classes[t]}"
        if truth:
            title += f"; true {truth}"
        shown = image if work.view is None else work.view(path)
        save_overlay(shown, cam, work.out_dir / "overlays" / f"{stem}.png", title)
        yield {"name": name, "file": str(path), "true": truth or "", "predicted": classes[k],
               "probability": f"{p[k]:.4f}", "target": classes[t],
               "overlay": f"overlays/{stem}.png", "map": f"maps/{stem}.npy", "warning": note}  # fmt: skip


def _explain_pairs(chunk, work: _Work, failures) -> Iterator[dict]:
    """Overlays and maps of one chunk of patients; their index rows. Unreadable eyes go to `failures`."""
    model, meta, load, view = work.model, work.meta, work.load, work.view
    classes, norm = meta["classes"], meta["normalization"]
    device = next(model.parameters()).device
    size = meta["preprocessing"]["image_size"]
    # one photograph per side here (explain_cli keeps patients with several apart): one view per patient
    views = load_views([paths for _, paths, _ in chunk], load, size)
    images, mask, notes = views.images, views.mask, views.notes
    failures += [eye for eyes in views.errors for eye in eyes]
    keep = mask.any(1)
    if not keep.any():
        return
    x, m = images[keep], mask[keep]
    with torch.inference_mode():
        _, logits = model(
            normalize(x.to(device).flatten(0, 1), norm["mean"], norm["std"]).view(x.shape),
            m.to(device),
        )
    prob = torch.softmax(logits.float(), 1).cpu().numpy()
    prob, pred = as_predicted(prob, meta)
    targets = work.targets(pred)
    cams = compute_pair_cams(model, x, m, norm["mean"], norm["std"], work.method, list(targets))
    kept = [(c, "; ".join(n)) for c, n, k in zip(chunk, notes, keep, strict=True) if k]
    for ((name, paths, truth), note), eyes, present, cam, p, k, t in zip(
        kept, x, m, cams, prob, pred, targets, strict=True
    ):
        stem = str(name).replace("/", "__")
        np.save(work.out_dir / "maps" / f"{stem}.npy", cam.astype(np.float16))
        shown = [view(paths[j]) if view and present[j] else eyes[j].permute(1, 2, 0).numpy()
                 for j in range(2)]  # fmt: skip
        maps = [cam[j] if present[j] else None for j in range(2)]
        title = f"patient {name}: {decision_text(p, k, classes)}; map for {classes[t]}"
        title += f"; true {truth}" if truth else ""
        save_overlay(
            shown, maps, work.out_dir / "overlays" / f"{stem}.png", title, names=("right eye", "left eye")
        )
        yield {"name": str(name), "right_file": str(paths[0] or ""), "left_file": str(paths[1] or ""),
               "true": truth or "", "predicted": classes[k], "probability": f"{p[k]:.4f}",
               "target": classes[t], "overlay": f"overlays/{stem}.png", "map": f"maps/{stem}.npy",
               "warning": note}  # fmt: skip
