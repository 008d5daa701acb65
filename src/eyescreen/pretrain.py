"""`eyescreen pretrain`: self-supervised pre-training (SimCLR) on fundus photographs, labelled or not.

No weights can be downloaded in a closed hospital network, but there are usually more photographs than
labels. SimCLR (Chen et al. 2020) learns from two random views of each image: the network must match
the views of the same eye among those of the whole batch (NT-Xent loss). The model's own classifier
layer serves as a linear projection head to `projection_dim` features, so any registered model can be
pre-trained; `train --init FILE` then starts from these weights (all but the classifier layer).
"""

from __future__ import annotations

import csv
import json
import math
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from .augment import FundusAugment
from .batch_output import keep_problems
from .checkpoint import PRETRAINED, load_state, save_model, save_state
from .data import list_images, read_class_folders, read_manifest
from .inference import autocast, resolve_device, resolve_precision
from .models import create_model
from .pace import budget_after_epoch, budget_line, check_budget, time_left
from .photo_links import without_links_to
from .preprocess import DEFAULT_MEAN, DEFAULT_STD, ImageCache, Preprocessing, load_stack, normalize
from .stopping import StopRequest
from .train import seed_everything


@dataclass
class PretrainConfig:
    model: str = "resnet18"
    image_size: int = 128
    enhance: str = "none"
    epochs: int = 20
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 1e-4
    temperature: float = 0.2
    projection_dim: int = 128
    seed: int = 0
    precision: str = "auto"
    device: str = "auto"
    holdout_split: str = ""  # a fine-tuning split file: its val/test patients are left out
    time_budget: float = 0.0  # minutes from the start; after the first epoch, as many epochs as fit (0: all)

    def __post_init__(self):
        check_budget(self.time_budget)


def image_paths(sources: list[str | Path], holdout: frozenset[str] = frozenset()) -> list[Path]:
    """Every image of the manifests (with or without a label), class folders and plain folders, but
    those of the `holdout` patients."""
    return _paths(sources, holdout)[0]


def _paths(sources: list[str | Path], holdout: frozenset[str]) -> tuple[list[Path], list[Path]]:
    """The images to pre-train on and the `holdout` patients' photographs found among the sources."""
    paths: list[Path] = []
    held: list[Path] = []
    for source in map(Path, sources):
        if source.is_file() and source.suffix.lower() == ".csv":
            records = read_manifest(source)
        elif source.is_dir() and any(p.is_dir() for p in source.iterdir()):
            records = read_class_folders(source)
        else:
            paths += list_images([source])
            continue
        paths += [r.path for r in records if r.group not in holdout]
        held += [r.path for r in records if r.group in holdout]
    return list(dict.fromkeys(paths)), held  # the same file named twice counts once


def holdout_patients(split_file: str | Path) -> frozenset[str]:
    """The patients a training split file (`train --out`'s split.csv) puts in validation or test:
    pre-training on their photographs, even without labels, would let the test patients leak in."""
    with open(split_file, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows or not {"patient", "split"} <= set(rows[0]):
        raise ValueError(f"{split_file}: expected a split file with columns image,patient,label,split")
    return frozenset(r["patient"] for r in rows if r["split"] in ("val", "test"))


def views() -> FundusAugment:
    """Random views of uint8 fundus batches, stronger than training augmentation (SimCLR needs it):
    zoomed in up to 1.6x (a crop of ~40% of the area), shifted, rotated, flipped, recoloured, blurred."""
    return FundusAugment(degrees=180, scale=(1.0, 1.6), translate=0.15, brightness=0.4, contrast=0.4,
                         saturation=0.3, hue=0.05, gamma=(0.7, 1.4), blur=0.3)  # fmt: skip


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """SimCLR's loss: each view must pick its partner among the 2N - 1 other views of the batch."""
    z = F.normalize(torch.cat([z1, z2]).float(), dim=1)
    n = len(z1)
    similarity = z @ z.T / temperature
    similarity.fill_diagonal_(-math.inf)
    partner = torch.cat([torch.arange(n, 2 * n), torch.arange(n)]).to(z.device)
    return F.cross_entropy(similarity, partner)


def learning_rate(cfg: PretrainConfig, epoch: int) -> float:
    """Cosine from `cfg.lr` to zero over `cfg.epochs` (a 0-based epoch), read afresh each epoch: a time
    budget may shorten the run after its first."""
    return cfg.lr * 0.5 * (1 + math.cos(math.pi * epoch / cfg.epochs))


def pretrain(cfg: PretrainConfig, sources: list[str | Path], out_dir: str | Path, resume: bool = False,
             cache_dir=None, progress: bool = True) -> Path:  # fmt: skip
    out = Path(out_dir)
    started = time.perf_counter()  # what a time budget counts from
    budget = None  # the time budget's decision, once made (after the first epoch)
    if resume:
        state = load_state(out / "pretrain-resume.pt")
        cfg = PretrainConfig(**json.loads(state["config"]))
        budget = state.get("budget")
    elif (out / "pretrain-resume.pt").exists():
        raise FileExistsError(f"{out}: already holds a pre-training run; use --resume or another --out")
    out.mkdir(parents=True, exist_ok=True)
    seed_everything(cfg.seed)
    device = resolve_device(cfg.device)
    precision = resolve_precision(cfg.precision, device)
    holdout = holdout_patients(cfg.holdout_split) if cfg.holdout_split else frozenset()
    paths, held = _paths(sources, holdout)
    # a held-out eye saved or photographed again under another id or name would leak in all the same
    paths, linked = without_links_to(paths, held, cache_dir, progress) if held else (paths, [])
    prep = Preprocessing(image_size=cfg.image_size, enhance=cfg.enhance)
    images, ok, failed = load_stack(paths, ImageCache(prep, cache_dir), progress=progress, desc="images")
    keep_problems("could not read", [message for _, message in failed], out / "unreadable.txt")
    if len(ok) < 2:
        raise ValueError("pre-training needs at least two readable images")
    print(f"pre-training {cfg.model} on {len(ok)} images ({len(failed)} unreadable; "
          f"{len(holdout)} held-out patients left out, with {len(linked)} photographs of their eyes under "
          f"other ids or names), {cfg.epochs} epochs")  # fmt: skip
    model = create_model(cfg.model, cfg.projection_dim).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    transform = views()
    start = 0
    if resume:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["rng"])
        start = state["epoch"] + 1
    batch = min(cfg.batch_size, len(images))
    meta = {
        "kind": "pretrained",
        "model": {"name": cfg.model, "args": {"num_classes": cfg.projection_dim}},
        "preprocessing": asdict(prep),
        "normalization": {"mean": list(DEFAULT_MEAN), "std": list(DEFAULT_STD)},
        "pretrain": asdict(cfg)
        | {
            "method": "simclr",
            "images": len(ok),
            "holdout_patients": len(holdout),
            "holdout_linked": len(linked),
            "budget": budget,  # how a time budget chose the epochs, once it has
        },
    }
    paces: list[dict] = []  # this process's epochs: the pace of the machine it runs on
    with StopRequest() as stop:  # SIGTERM or Ctrl-C: finish the epoch, write it, stop
        for epoch in range(start, cfg.epochs):
            if epoch >= cfg.epochs:
                break  # the time budget shortened the run
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(cfg, epoch)
            model.train()
            began, losses = time.perf_counter(), []
            order = torch.randperm(len(images))
            steps = range(0, len(order) - batch + 1, batch)  # full batches: NT-Xent needs negatives
            for s in tqdm(steps, desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=not progress, leave=False):
                chunk = images[order[s : s + batch]]
                chunk = chunk.to(device)
                x = normalize(torch.cat([transform(chunk), transform(chunk)]), DEFAULT_MEAN, DEFAULT_STD)
                with autocast(device, precision):
                    z = model(x)
                loss = nt_xent(z[: len(chunk)], z[len(chunk) :], cfg.temperature)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                losses.append(loss.item())
            mean = sum(losses) / max(len(losses), 1)
            paces.append({"epoch": epoch + 1, "seconds": time.perf_counter() - began})
            decided = budget_after_epoch(cfg.time_budget, cfg.epochs, budget, paces, 0, started,
                                         revise=not resume)  # fmt: skip
            if decided is not None:
                budget = decided
                cfg = replace(cfg, epochs=budget["epochs"])
                meta["pretrain"] |= {"epochs": cfg.epochs, "budget": budget}
                print(budget_line(budget))
            left = time_left(paces, cfg.epochs)
            print(
                f"epoch {epoch + 1}/{cfg.epochs}: contrastive loss {mean:.4f} | {paces[-1]['seconds']:.0f}s"
                + (f"  ({left})" if left else "")
            )
            save_model(out / PRETRAINED, model, meta | {"epoch": epoch + 1, "loss": mean})
            save_state(out / "pretrain-resume.pt", {
                "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "rng": torch.get_rng_state(), "epoch": epoch, "config": json.dumps(asdict(cfg)), "budget": budget,
            })  # fmt: skip
            stop.stop_if_asked(epoch + 1, cfg.epochs, out, "continue with the same command and --resume")
    return out / PRETRAINED
