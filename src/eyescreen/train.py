"""The training loop: seeded, resumable, with atomic best/last checkpoints and a per-epoch log.

Images are preprocessed once into a uint8 tensor held in memory (backed by the on-disk cache), so an
epoch is only tensor indexing, normalisation and the model: no JPEG decoding, no loader workers.
"""

from __future__ import annotations

import csv
import json
import math
import platform
import random
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from . import __version__, augment, distributed
from .calibrate import calibrate_checkpoint
from .checkpoint import load_state, save_model, save_state
from .config import TrainConfig
from .data import Dataset, load_dataset, make_split, read_split, split_counts, subset, write_split
from .inference import autocast, predict_proba, prepare_batch, resolve_device, resolve_precision
from .metrics import headline_metrics
from .models import create_model
from .preprocess import DEFAULT_MEAN, DEFAULT_STD, ImageCache, Preprocessing, load_stack

LOG_COLUMNS = [
    "epoch", "lr", "train_loss", "train_accuracy", "val_loss",
    "val_accuracy", "val_balanced_accuracy", "val_macro_auc", "seconds",
]  # fmt: skip


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def make_optimizer(cfg: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    params = model.parameters()
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(params, lr=cfg.lr, momentum=0.9, nesterov=True, weight_decay=cfg.weight_decay)


def lr_factor(cfg: TrainConfig, epoch: int) -> float:
    """Learning-rate multiplier for a 0-based epoch: linear warm-up, then cosine to zero or constant.

    With no warm-up this is exactly CosineAnnealingLR(T_max=epochs, eta_min=0) stepped per epoch.
    """
    if epoch < cfg.warmup_epochs:
        return (epoch + 1) / (cfg.warmup_epochs + 1)
    if cfg.scheduler == "constant":
        return 1.0
    span = max(cfg.epochs - cfg.warmup_epochs, 1)
    return 0.5 * (1 + math.cos(math.pi * (epoch - cfg.warmup_epochs) / span))


def run_info(argv: list[str] | None) -> dict:
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=Path(__file__).parent, timeout=5
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return {
        "eyescreen": __version__,
        "git_commit": commit or None,
        "command": argv if argv is not None else sys.argv,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def _quiet(*args, **kwargs) -> None:
    pass


def _write_log(path: Path, history: list[dict]) -> None:
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=LOG_COLUMNS)
        w.writeheader()
        w.writerows(history)
    tmp.replace(path)


def _load_images(ds: Dataset, cache: ImageCache, name: str, progress: bool, report: bool = True):
    images, ok, errors = load_stack([r.path for r in ds.records], cache, progress=progress, desc=name)
    for _, message in errors if report else []:
        print(f"skipped: {message}", file=sys.stderr)
    labels = torch.as_tensor(ds.labels()[ok])
    return images, labels, [ds.records[i] for i in ok], errors


def train(
    cfg: TrainConfig | None,
    data: str | Path,
    out_dir: str | Path,
    classes: list[str] | None = None,
    split_file: str | Path | None = None,
    resume: bool = False,
    cache_dir: str | Path | None = None,
    progress: bool = True,
    argv: list[str] | None = None,
) -> Path:
    """Train a model on `data` into `out_dir`; returns the path of the best checkpoint."""
    out = Path(out_dir)
    if resume:
        state = load_state(out / "resume.pt")
        saved = json.loads(state["meta"])
        cfg = TrainConfig(**saved["config"]).validate()
        classes = saved["classes"]
        split_file = out / "split.csv"
    elif (out / "resume.pt").exists():
        raise FileExistsError(
            f"{out}: already holds a run; use --resume to continue it or choose another --out"
        )
    cfg.validate()
    out.mkdir(parents=True, exist_ok=True)
    seed_everything(cfg.seed)
    ctx, device = distributed.setup(resolve_device(cfg.device))
    say = print if ctx.main else _quiet  # one voice, and one writer: rank 0

    dataset = load_dataset(data, classes)
    say(dataset.summary())
    split = (
        read_split(split_file, dataset)
        if split_file
        else make_split(dataset, cfg.val_fraction, cfg.test_fraction, cfg.seed)
    )
    if ctx.main:
        write_split(split, dataset, out / "split.csv")
    say("split by patient:\n" + split_counts(dataset, split))

    prep = Preprocessing(image_size=cfg.image_size, enhance=cfg.enhance)
    cache = ImageCache(prep, cache_dir)
    show = progress and ctx.main
    x_train, y_train, _, bad_train = _load_images(
        subset(dataset, split, "train"), cache, "train", show, ctx.main
    )
    x_val, y_val, _, bad_val = _load_images(subset(dataset, split, "val"), cache, "val", show, ctx.main)
    if len(x_train) == 0 or len(x_val) == 0:
        raise ValueError(f"{data}: no readable images in the train or validation split")

    if cfg.batch_size % ctx.world:
        raise ValueError(f"batch_size {cfg.batch_size} must be divisible by the {ctx.world} processes")
    local_batch = cfg.batch_size // ctx.world  # the global batch stays cfg.batch_size
    precision = resolve_precision(cfg.precision, device)
    channels_last = cfg.channels_last
    model = create_model(cfg.model, num_classes=len(dataset.classes)).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    net = model  # what runs forward/backward: the DistributedDataParallel wrapper when distributed
    if ctx.enabled:
        net = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device] if device.type == "cuda" else None
        )
    if cfg.compile:
        net = torch.compile(net)
    optimizer = make_optimizer(cfg, model)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda e: lr_factor(cfg, e))
    counts = torch.bincount(y_train, minlength=len(dataset.classes)).double().clamp_min(1)
    weights = None
    if cfg.class_weighting == "balanced":
        weights = (counts.sum() / (len(counts) * counts)).float().to(device)
    loss_fn = nn.CrossEntropyLoss(weight=weights, label_smoothing=cfg.label_smoothing)
    # Logit adjustment: train on logits + tau * log(prior) so the model itself is not biased to the
    # frequent classes; at inference the plain logits are used.
    log_prior = (cfg.logit_adjust * torch.log(counts / counts.sum())).float().to(device)
    transform = augment.build(cfg.augment, cfg.image_size)
    scaler = torch.amp.GradScaler("cuda", enabled=precision == "fp16")

    meta = {
        "model": {"name": cfg.model, "args": {"num_classes": len(dataset.classes)}},
        "classes": dataset.classes,
        "preprocessing": asdict(prep),
        "normalization": {"mean": list(DEFAULT_MEAN), "std": list(DEFAULT_STD)},
        "config": asdict(cfg),
        "data": str(Path(data).resolve()),
        "split": split,
    }
    start_epoch, best, best_epoch, history = 0, -math.inf, -1, []
    if resume:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng"])
        start_epoch, best, best_epoch = state["epoch"] + 1, state["best"], state["best_epoch"]
        history = json.loads(state["history"])
        say(f"resuming {out} after epoch {start_epoch} of {cfg.epochs}")
    elif ctx.main:
        info = run_info(argv) | {
            "precision": precision,
            "device": str(device),
            "channels_last": channels_last,
            "processes": ctx.world,
        }
        (out / "config.json").write_text(
            json.dumps({"config": asdict(cfg), "classes": dataset.classes}, indent=2)
        )
        (out / "run_info.json").write_text(json.dumps(info, indent=2))
        if bad_train or bad_val:
            (out / "skipped_images.txt").write_text("\n".join(m for _, m in bad_train + bad_val) + "\n")

    mean, std = meta["normalization"]["mean"], meta["normalization"]["std"]
    n = len(x_train)
    for epoch in range(start_epoch, cfg.epochs):
        t0 = time.perf_counter()
        model.train()
        # The order depends only on (seed, epoch), so a resumed run sees the same batches.
        if cfg.sampler == "balanced":
            order = distributed.balanced_epoch_indices(y_train, cfg.seed, epoch, ctx)
        else:
            order = distributed.epoch_indices(n, cfg.seed, epoch, ctx)
        if len(order) % local_batch == 1:
            order = order[:-1]  # a batch of one breaks batch normalisation
        total_loss, correct, seen = 0.0, 0, 0
        bar = tqdm(range(0, len(order), local_batch), desc=f"epoch {epoch + 1}/{cfg.epochs}",
                   disable=not (progress and ctx.main))  # fmt: skip
        for start in bar:
            idx = order[start : start + local_batch]
            x = prepare_batch(augment.apply(transform, x_train[idx]), device, mean, std, channels_last)
            y = y_train[idx].to(device)
            with autocast(device, precision):
                logits = net(x)
                loss = loss_fn(logits.float() + log_prior if cfg.logit_adjust else logits.float(), y)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            total_loss += loss.item() * len(idx)
            correct += (logits.argmax(1) == y).sum().item()
            seen += len(idx)
            bar.set_postfix(loss=f"{total_loss / seen:.4f}", acc=f"{correct / seen:.3f}")
        lr = optimizer.param_groups[0]["lr"]
        scheduler.step()
        total_loss, correct, seen = distributed.sum_across(ctx, total_loss, correct, seen)
        if not ctx.main:
            continue  # validation, logs and checkpoints are rank 0's job

        prob = predict_proba(model, x_val, mean, std, device, precision, channels_last)
        val = headline_metrics(y_val.numpy(), prob)
        val_loss = float(nn.functional.nll_loss(torch.log(torch.from_numpy(prob).clamp_min(1e-12)), y_val))
        row = {
            "epoch": epoch + 1, "lr": lr, "train_loss": total_loss / seen, "train_accuracy": correct / seen,
            "val_loss": val_loss, "val_accuracy": val["accuracy"],
            "val_balanced_accuracy": val["balanced_accuracy"], "val_macro_auc": val["macro_auc"],
            "seconds": round(time.perf_counter() - t0, 2),
        }  # fmt: skip
        history.append(row)
        _write_log(out / "metrics.csv", history)
        score = val[cfg.select_metric]
        score = -math.inf if math.isnan(score) else score
        epoch_meta = meta | {"epoch": epoch + 1, "val_metrics": val}
        if score > best:
            best, best_epoch = score, epoch + 1
            save_model(out / "best.safetensors", model, epoch_meta)
        save_model(out / "last.safetensors", model, epoch_meta)
        save_state(
            out / "resume.pt",
            {
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "rng": torch.get_rng_state(),
                "epoch": epoch,
                "best": best,
                "best_epoch": best_epoch,
                "history": json.dumps(history),
                "meta": json.dumps({"config": asdict(cfg), "classes": dataset.classes}),
            },
        )
        print(
            f"epoch {epoch + 1}/{cfg.epochs}: train loss {row['train_loss']:.4f} acc {row['train_accuracy']:.3f} | "
            f"val acc {val['accuracy']:.3f} bal-acc {val['balanced_accuracy']:.3f} "
            f"macro-AUC {val['macro_auc']:.3f} | {row['seconds']:.0f}s"
            + ("  *best" if best_epoch == epoch + 1 else "")
        )
    if ctx.main and best_epoch > 0:
        calibrate_checkpoint(
            out / "best.safetensors", x_val, y_val, device, precision, channels_last, cfg.normal_class
        )
    distributed.barrier(ctx)
    distributed.teardown(ctx)
    if ctx.main:
        print(f"best epoch {best_epoch} ({cfg.select_metric} {best:.4f}); checkpoints in {out}")
    return out / "best.safetensors"
