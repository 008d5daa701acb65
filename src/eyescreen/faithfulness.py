"""Is a CAM faithful to the model? Deletion/insertion curves and the parameter-randomisation check.

pytorch-grad-cam offers ROAD and confidence-change metrics but not the classic deletion and
insertion curves (Petsiuk et al., 2018) nor the model-parameter-randomisation sanity check
(Adebayo et al., 2018); both are written here, on top of the library's CAMs (`compute_cams`).

A both-eye model is scored the same way on its patient decision: images [P, 2, 3, H, W] with a presence
mask [P, 2], one map per eye ([P, 2, H, W]); each eye is perturbed by its own map, both eyes at once.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from scipy.stats import spearmanr
from torch import nn
from tqdm import tqdm

from .explain import compute_cams
from .preprocess import normalize


@torch.inference_mode()
def _target_prob(
    model, x: torch.Tensor, targets: torch.Tensor, mask=None, batch_size: int = 64
) -> np.ndarray:
    """Probability of each sample's target class; with `mask`, a both-eye model's patient probability."""
    from .inference import autocast, resolve_precision

    device = x.device
    out = []
    with autocast(
        device, resolve_precision("auto", device)
    ):  # bf16 where native and faster: the curves need many passes
        for start in range(0, len(x), batch_size):
            part = x[start : start + batch_size]
            logits = model(part) if mask is None else model(part, mask[start : start + batch_size])[1]
            out.append(
                torch.softmax(logits.float(), 1).gather(1, targets[start : start + batch_size, None])[:, 0]
            )
    return torch.cat(out).cpu().numpy()


def _blurred(x: torch.Tensor) -> torch.Tensor:
    """The 'absent information' reference: a heavily blurred copy (keeps colour, drops detail)."""
    k = max(3, x.shape[-1] // 8) | 1
    flat = x.flatten(0, x.dim() - 4)  # pooling takes [N, C, H, W]: a patient's eyes become two images
    blurred = torch.nn.functional.avg_pool2d(flat, k, stride=1, padding=k // 2, count_include_pad=False)
    return blurred.view_as(x)


def predicted_classes(model: nn.Module, images: torch.Tensor, mean, std, mask=None, batch_size: int = 32):
    """The class the model names for each image, or for each patient of a both-eye model."""
    from .explain import pair_decisions
    from .inference import predict_proba

    if mask is None:
        return predict_proba(model, images, mean, std, next(model.parameters()).device).argmax(1)
    return np.array([k for start in range(0, len(images), batch_size) for k in pair_decisions(
        model, images[start : start + batch_size], mask[start : start + batch_size], mean, std)], dtype=int)  # fmt: skip


def explanation_maps(
    model, images, mean, std, method, targets, mask=None, batch_size: int = 16
) -> np.ndarray:
    """`compute_cams` per image, or `compute_pair_cams` per patient ([P, 2, H, W]) with `mask`."""
    from .explain import compute_pair_cams

    if mask is None:
        return compute_cams(model, images, mean, std, method, targets, batch_size)
    step = max(1, batch_size // 2)  # two eyes a patient
    return np.concatenate([compute_pair_cams(model, images[s : s + step], mask[s : s + step], mean, std, method,
                                             list(targets[s : s + step])) for s in range(0, len(images), step)])  # fmt: skip


def deletion_insertion(
    model: nn.Module,
    images: torch.Tensor,
    mean,
    std,
    maps: np.ndarray,
    targets,
    steps: int = 16,
    mask: torch.Tensor | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Per-image (with `mask`: per-patient) area under the deletion and insertion curves of the
    target-class probability.

    Deletion replaces the most important pixels first with a blurred copy (a faithful map makes the
    probability fall fast: low AUC); insertion starts from the blurred copy and restores the most
    important pixels first (a faithful map makes it rise fast: high AUC).
    """
    model.eval()
    device = next(model.parameters()).device
    x = normalize(images.to(device), mean, std)
    blurred = _blurred(x)
    targets = torch.as_tensor(np.asarray(targets), device=device)
    present = None if mask is None else mask.to(device)
    n, (h, w) = len(x), maps.shape[-2:]
    views = maps.reshape(-1, h * w)  # one row per image, or per eye of a patient
    rank = np.argsort(-views, axis=1, kind="stable")  # most important first
    fractions = np.linspace(0, 1, steps + 1)
    deletion, insertion = np.zeros((n, steps + 1)), np.zeros((n, steps + 1))
    for i, f in enumerate(fractions):
        top = np.zeros(views.shape, dtype=bool)
        np.put_along_axis(top, rank[:, : int(round(f * h * w))], True, axis=1)
        chosen = torch.from_numpy(top.reshape(maps.shape[:-2] + (1, h, w))).to(device)
        deletion[:, i] = _target_prob(model, torch.where(chosen, blurred, x), targets, present)
        insertion[:, i] = _target_prob(model, torch.where(chosen, x, blurred), targets, present)
    return np.trapezoid(deletion, fractions, axis=1), np.trapezoid(insertion, fractions, axis=1)


def random_maps(shape, seed: int = 0, cells: int = 7) -> np.ndarray:
    """A random-map baseline with CAM-like smoothness: a coarse random grid, upsampled. `shape` is
    (N, H, W), or (P, 2, H, W) for the eyes of patients."""
    rng = np.random.default_rng(seed)
    *lead, h, w = shape
    n = int(np.prod(lead))
    coarse = torch.from_numpy(rng.random((n, 1, cells, cells), dtype=np.float32))
    maps = torch.nn.functional.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False)
    return maps[:, 0].numpy().reshape(tuple(shape))


def _parametrised_children(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(name, m) for name, m in model.named_children() if any(True for _ in m.parameters())]


def _cascade(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The blocks to randomise, from the output back to the input. A both-eye model's path to its patient
    decision is its patient head and pooling, then its shared backbone block by block; its per-eye class
    layer is not on that path and is left out. An ensemble's members are randomised block by block
    together, where they share their blocks' names (else all at once)."""
    from .fusion import EYE_HEAD

    members = getattr(model, "members", None)
    if members is not None:
        steps = [_cascade(m) for m in members]
        names = [[name for name, _ in member] for member in steps]
        if any(n != names[0] for n in names):
            return [("members", members)]
        return [(name, nn.ModuleList([member[i][1] for member in steps])) for i, name in enumerate(names[0])]
    children = _parametrised_children(model)
    backbone = dict(children).get("backbone")
    if backbone is None:
        return list(reversed(children))
    heads = [(n, m) for n, m in reversed(children) if n not in ("backbone", EYE_HEAD)]
    return heads + [(f"backbone.{n}", m) for n, m in reversed(_parametrised_children(backbone))]


def _rank_correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman correlation of two maps; 0 where either is flat (a randomised model's map often is: it
    then keeps nothing of the trained model's ranking, and the coefficient itself is undefined)."""
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return 0.0
    return float(spearmanr(a.ravel(), b.ravel())[0])


def randomisation_check(
    model: nn.Module,
    images: torch.Tensor,
    mean,
    std,
    method: str = "gradcam",
    targets=None,
    seed: int = 0,
    mask: torch.Tensor | None = None,
) -> list[dict]:
    """Re-initialise the model's blocks from the output back to the input, cumulatively, and report the
    mean Spearman rank correlation between the trained model's maps and each randomised model's maps
    (per image; with `mask`, per present eye). A map that explains the model must change (correlation
    drops) when the weights do."""
    if targets is None:
        targets = predicted_classes(model, images, mean, std, mask)
    reference = explanation_maps(model, images, mean, std, method, targets, mask)
    present = slice(None) if mask is None else mask.cpu().numpy()
    randomised = copy.deepcopy(model)
    device = next(model.parameters()).device
    rows = []
    # the same random weights on every run, and the caller's random state left as it was
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        for name, block in _cascade(randomised):
            for m in block.modules():
                if hasattr(m, "reset_parameters"):
                    m.reset_parameters()
            maps = explanation_maps(randomised, images, mean, std, method, targets, mask)
            rhos = [_rank_correlation(a, b) for a, b in zip(reference[present], maps[present], strict=True)]
            rows.append(
                {"randomised_down_to": name, "spearman": float(np.nanmean(rhos)) if rhos else float("nan")}
            )
    return rows


def faithfulness_table(
    model: nn.Module,
    images: torch.Tensor,
    mean,
    std,
    methods: list[str],
    sanity_images: int = 16,
    batch_size: int = 16,
    mask: torch.Tensor | None = None,
    progress: bool = False,
) -> list[dict]:
    """One row per method (plus a random-map baseline): mean deletion and insertion AUC for the
    predicted class, the Spearman correlation after randomising all blocks, and CAM ms per image.
    With `mask`, `images` are patients of a both-eye model ([P, 2, 3, H, W]): the curves follow its
    patient decision, and the sanity check takes as many eyes as it would take images."""
    import time

    targets = predicted_classes(model, images, mean, std, mask)
    n_eyes = len(images) if mask is None else int(mask.sum())
    sanity = slice(None, sanity_images if mask is None else max(1, sanity_images // 2))
    rows = []
    # minutes a method on a CPU (the curves take 2 x 17 passes over every image): say how far it is
    bar = tqdm(total=len(methods) + 1, desc="faithfulness", unit="method", disable=not progress)
    for method in methods:
        bar.set_postfix_str(method)
        start = time.perf_counter()
        maps = explanation_maps(model, images, mean, std, method, list(targets), mask, batch_size)
        ms = (time.perf_counter() - start) * 1000 / max(n_eyes, 1)
        deletion, insertion = deletion_insertion(model, images, mean, std, maps, targets, mask=mask)
        cascade = randomisation_check(model, images[sanity], mean, std, method, list(targets[sanity]),
                                      mask=None if mask is None else mask[sanity])  # fmt: skip
        rows.append({"method": method, "deletion_auc": float(deletion.mean()), "insertion_auc": float(insertion.mean()),
                     "sanity_spearman": cascade[-1]["spearman"], "sanity_cascade": cascade, "ms_per_image": ms})  # fmt: skip
        bar.update()
    bar.set_postfix_str("random map")
    maps = random_maps(tuple(images.shape[:-3]) + tuple(images.shape[-2:]))
    deletion, insertion = deletion_insertion(model, images, mean, std, maps, targets, mask=mask)
    rows.append({"method": "random map (baseline)", "deletion_auc": float(deletion.mean()),
                 "insertion_auc": float(insertion.mean()), "sanity_spearman": None, "ms_per_image": None})  # fmt: skip
    bar.update()
    bar.close()
    return rows


def table_markdown(rows: list[dict], n_images: int, model_name: str, eyes: int | None = None) -> str:
    """With `eyes`, `n_images` counts the patients of a both-eye model and `eyes` their photographs."""

    def f(v, fmt):
        return "—" if v is None else format(v, fmt)

    if eyes is None:
        what = f"{n_images} images (target: the predicted class)"
    else:
        what = (f"{n_images} patients, {eyes} eyes (target: the patient's predicted class; each eye is "
                "perturbed by its own map, both at once)")  # fmt: skip
    lines = [
        f"Faithfulness of CAM methods for `{model_name}` on {what}.",
        "Deletion AUC: lower is better; insertion AUC: higher is better; sanity: Spearman correlation between",
        "the trained model's map and the map after randomising every block (should be near 0).",
        "",
        f"| method | deletion AUC ↓ | insertion AUC ↑ | sanity-check Spearman ↓ | ms / {'image' if eyes is None else 'eye'} |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['method']} | {r['deletion_auc']:.3f} | {r['insertion_auc']:.3f} | "
            f"{f(r['sanity_spearman'], '.3f')} | {f(r['ms_per_image'], '.1f')} |"
        )
    return "\n".join(lines) + "\n"
