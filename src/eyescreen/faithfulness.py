"""Is a CAM faithful to the model? Deletion/insertion curves and the parameter-randomisation check.

pytorch-grad-cam offers ROAD and confidence-change metrics but not the classic deletion and
insertion curves (Petsiuk et al., 2018) nor the model-parameter-randomisation sanity check
(Adebayo et al., 2018); both are written here, on top of the library's CAMs (`compute_cams`).
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from scipy.stats import spearmanr
from torch import nn

from .explain import compute_cams
from .preprocess import normalize


@torch.inference_mode()
def _target_prob(model, x: torch.Tensor, targets: torch.Tensor, batch_size: int = 64) -> np.ndarray:
    from .inference import autocast, resolve_precision

    device = x.device
    out = []
    with autocast(
        device, resolve_precision("auto", device)
    ):  # bf16 where native: the curves need many passes
        for start in range(0, len(x), batch_size):
            logits = model(x[start : start + batch_size]).float()
            out.append(torch.softmax(logits, 1).gather(1, targets[start : start + batch_size, None])[:, 0])
    return torch.cat(out).cpu().numpy()


def _blurred(x: torch.Tensor) -> torch.Tensor:
    """The 'absent information' reference: a heavily blurred copy (keeps colour, drops detail)."""
    k = max(3, x.shape[-1] // 8) | 1
    return torch.nn.functional.avg_pool2d(x, k, stride=1, padding=k // 2, count_include_pad=False)


def deletion_insertion(
    model: nn.Module,
    images: torch.Tensor,
    mean,
    std,
    maps: np.ndarray,
    targets,
    steps: int = 16,
) -> tuple[np.ndarray, np.ndarray]:
    """Per-image area under the deletion and insertion curves of the target-class probability.

    Deletion replaces the most important pixels first with a blurred copy (a faithful map makes the
    probability fall fast: low AUC); insertion starts from the blurred copy and restores the most
    important pixels first (a faithful map makes it rise fast: high AUC).
    """
    model.eval()
    device = next(model.parameters()).device
    x = normalize(images.to(device), mean, std)
    blurred = _blurred(x)
    targets = torch.as_tensor(np.asarray(targets), device=device)
    n, h, w = maps.shape
    rank = np.argsort(-maps.reshape(n, -1), axis=1, kind="stable")  # most important first
    fractions = np.linspace(0, 1, steps + 1)
    deletion, insertion = np.zeros((n, steps + 1)), np.zeros((n, steps + 1))
    for i, f in enumerate(fractions):
        top = np.zeros((n, h * w), dtype=bool)
        np.put_along_axis(top, rank[:, : int(round(f * h * w))], True, axis=1)
        mask = torch.from_numpy(top.reshape(n, 1, h, w)).to(device)
        deletion[:, i] = _target_prob(model, torch.where(mask, blurred, x), targets)
        insertion[:, i] = _target_prob(model, torch.where(mask, x, blurred), targets)
    return np.trapezoid(deletion, fractions, axis=1), np.trapezoid(insertion, fractions, axis=1)


def random_maps(shape, seed: int = 0, cells: int = 7) -> np.ndarray:
    """A random-map baseline with CAM-like smoothness: a coarse random grid, upsampled."""
    rng = np.random.default_rng(seed)
    n, h, w = shape
    coarse = torch.from_numpy(rng.random((n, 1, cells, cells), dtype=np.float32))
    return torch.nn.functional.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False)[
        :, 0
    ].numpy()


def _parametrised_children(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(name, m) for name, m in model.named_children() if any(True for _ in m.parameters())]


def randomisation_check(
    model: nn.Module, images: torch.Tensor, mean, std, method: str = "gradcam", targets=None, seed: int = 0
) -> list[dict]:
    """Re-initialise the model's blocks from the output back to the input, cumulatively, and report the
    mean Spearman rank correlation between the trained model's maps and each randomised model's maps.
    A map that explains the model must change (correlation drops) when the weights do."""
    reference = compute_cams(model, images, mean, std, method, targets)
    randomised = copy.deepcopy(model)
    torch.manual_seed(seed)
    rows = []
    for name, block in reversed(_parametrised_children(randomised)):
        for m in block.modules():
            if hasattr(m, "reset_parameters"):
                m.reset_parameters()
        maps = compute_cams(randomised, images, mean, std, method, targets)
        rhos = [spearmanr(a.ravel(), b.ravel())[0] for a, b in zip(reference, maps, strict=True)]
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
) -> list[dict]:
    """One row per method (plus a random-map baseline): mean deletion and insertion AUC for the
    predicted class, the Spearman correlation after randomising all blocks, and CAM ms per image."""
    import time

    from .inference import predict_proba

    device = next(model.parameters()).device
    targets = predict_proba(model, images, mean, std, device).argmax(1)
    rows = []
    for method in methods:
        start = time.perf_counter()
        maps = compute_cams(model, images, mean, std, method, list(targets), batch_size)
        ms = (time.perf_counter() - start) * 1000 / len(images)
        deletion, insertion = deletion_insertion(model, images, mean, std, maps, targets)
        sanity = randomisation_check(
            model, images[:sanity_images], mean, std, method, list(targets[:sanity_images])
        )
        rows.append({"method": method, "deletion_auc": float(deletion.mean()), "insertion_auc": float(insertion.mean()),
                     "sanity_spearman": sanity[-1]["spearman"], "sanity_cascade": sanity, "ms_per_image": ms})  # fmt: skip
    maps = random_maps((len(images),) + tuple(images.shape[-2:]))
    deletion, insertion = deletion_insertion(model, images, mean, std, maps, targets)
    rows.append({"method": "random map (baseline)", "deletion_auc": float(deletion.mean()),
                 "insertion_auc": float(insertion.mean()), "sanity_spearman": None, "ms_per_image": None})  # fmt: skip
    return rows


def table_markdown(rows: list[dict], n_images: int, model_name: str) -> str:
    def f(v, fmt):
        return "—" if v is None else format(v, fmt)

    lines = [
        f"Faithfulness of CAM methods for `{model_name}` on {n_images} images (target: the predicted class).",
        "Deletion AUC: lower is better; insertion AUC: higher is better; sanity: Spearman correlation between",
        "the trained model's map and the map after randomising every block (should be near 0).",
        "",
        "| method | deletion AUC ↓ | insertion AUC ↑ | sanity-check Spearman ↓ | ms / image |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['method']} | {r['deletion_auc']:.3f} | {r['insertion_auc']:.3f} | "
            f"{f(r['sanity_spearman'], '.3f')} | {f(r['ms_per_image'], '.1f')} |"
        )
    return "\n".join(lines) + "\n"
