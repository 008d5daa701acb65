"""The training loop: seeded, resumable, with atomic best/last checkpoints and a per-epoch log.

Images are preprocessed once into a uint8 tensor held in memory (backed by the on-disk cache), so an
epoch is only tensor indexing, normalisation and the model: no JPEG decoding, no loader workers.
"""

from __future__ import annotations

import csv
import gc
import json
import math
import os
import platform
import random
import subprocess
import sys
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm import tqdm

from . import __version__, augment, distributed
from .calibrate import normal_class_of
from .calibrate_checkpoint import both_eyes_validation, calibrate_on_validation, validation_eyes
from .checkpoint import (
    BEST,
    PRETRAINED,
    checkpoint_in,
    load_model,
    load_state,
    save_model,
    save_state,
    save_weights,
    weights_of,
)
from .config import TrainConfig
from .cpu_precision import cpu_note
from .data import (
    MAX_LINKED,
    Dataset,
    keep_linked_together,
    linked_apart,
    load_dataset,
    make_split,
    manifest_fingerprint,
    read_split,
    split_counts,
    subset,
    thin_validation,
    write_split,
)
from .distill import teacher_probabilities, teacher_term
from .findings import training_findings
from .held_out_links import recorded_links
from .inference import autocast, paths_predictor, resolve_device, resolve_precision
from .initial_weights import check_held_out
from .metrics import headline_metrics
from .models import is_binocular
from .pace import budget_after_epoch, budget_line, time_left
from .photo_links import linked as linked_photographs
from .preprocess import DEFAULT_MEAN, DEFAULT_STD, ImageCache, Preprocessing
from .stopping import StopRequest
from .tasks import BothEyes, BothEyesWithFindings, SingleEye, SingleEyeWithFindings, mixup

GPU_SAVE_EVERY = 30.0  # seconds between checkpoint writes on a GPU (see train's docstring)

LOG_COLUMNS = [
    "epoch", "lr", "train_loss", "train_accuracy", "val_loss",
    "val_accuracy", "val_balanced_accuracy", "val_macro_auc", "seconds", "peak_rss_mb",
]  # fmt: skip


def peak_rss_mb() -> float | None:
    """This process's peak resident memory so far (logged per epoch: it should stop growing)."""
    try:
        import resource
    except ImportError:  # not on Windows
        return None
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(kb / (1024 * 1024 if sys.platform == "darwin" else 1024), 1)


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


def make_ema(model: nn.Module, decay: float) -> AveragedModel | None:
    """An exponential moving average of the weights (and batch-norm statistics), updated every step.

    Averaging the last few hundred steps smooths the noisy end of a short from-scratch run; with it on,
    the average is what is validated and saved.
    """
    if decay <= 0:
        return None
    return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)


def compile_model(net: nn.Module, backend: str = "inductor") -> nn.Module:
    """`torch.compile` with one static graph per batch shape. An epoch's last batch is usually smaller;
    by default dynamo would then recompile with a symbolic batch size, and that dynamic graph would serve
    every later batch, full ones included. Static graphs did not make `--compile` pay on a GPU, though:
    an epoch still takes 1.26 times as long as eager on one H200 (benchmarks/RESULTS.md)."""
    return torch.compile(net, dynamic=False, backend=backend)


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
    # A copied tree (a GPU machine, a container) may have no .git, or a stale one: a commit the caller
    # names wins.
    commit = os.environ.get("EYESCREEN_COMMIT") or commit
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


def write_checkpoints(out: Path, best: tuple | None, last: tuple, resume_state: dict) -> None:
    """best.safetensors (when `best` = (weights, meta) holds an improvement not yet written),
    last.safetensors from `last` = (model, meta), then resume.pt: written together, the files agree."""
    if best:
        save_weights(out / BEST, *best)
    save_model(out / "last.safetensors", *last)
    save_state(out / "resume.pt", resume_state)


def epoch_line(row: dict, epochs: int, best_epoch: int) -> str:
    return (
        f"epoch {row['epoch']}/{epochs}: train loss {row['train_loss']:.4f} acc {row['train_accuracy']:.3f} | "
        f"val acc {row['val_accuracy']:.3f} bal-acc {row['val_balanced_accuracy']:.3f} "
        f"macro-AUC {row['val_macro_auc']:.3f} | {row['seconds']:.0f}s"
        + ("  *best" if best_epoch == row["epoch"] else "")
    )


def make_task(cfg: TrainConfig, dataset: Dataset, split: dict, say=print, cache_dir=None):
    """One eye or both eyes per sample; with --findings, plus the findings head."""
    if is_binocular(cfg.model):  # refused before the findings column is read
        if cfg.mixup:
            raise ValueError("--mixup blends single eyes; it cannot be used with a both-eye model")
        if cfg.crop_on_disc:
            raise ValueError("--crop-on-disc crops single eyes; it cannot be used with a both-eye model")
        if cfg.teacher:
            raise ValueError(
                "--teacher distils into a single-eye model; it cannot be used with a both-eye model"
            )
    findings = training_findings(dataset, split, cfg.findings, cache_dir=cache_dir) if cfg.findings else None
    if findings is not None:
        say(findings.summary())
    if is_binocular(cfg.model):
        both_eyes = dict(normal_class=cfg.normal_class, pooling=cfg.pooling, two_diseases=cfg.two_diseases,
                         mirror_left=cfg.mirror_left)  # fmt: skip
        if findings is not None:
            return BothEyesWithFindings(dataset.classes, findings, cfg.findings_weight, **both_eyes)
        return BothEyes(dataset.classes, **both_eyes)
    if findings is not None:
        return SingleEyeWithFindings(dataset.classes, findings, cfg.findings_weight)
    return SingleEye(dataset.classes)


def choose_split(
    dataset: Dataset,
    cfg: TrainConfig,
    split_file,
    resume: bool,
    ctx,
    say,
    progress: bool,
    cache_dir=None,
    resumed_links=None,
) -> tuple[dict, list[list[str]] | None]:
    """The run's split: the file given (or the resumed run's), else a new one by patient in which patients
    sharing a photograph or an eye (saved or photographed again under another id: photo_links) are kept
    together. A file given is read as it is, with a warning where it parts them. Also the links, as the
    checkpoint keeps them (held_out_links.recorded_links; a resumed run's as it saved them)."""
    if resume:
        return read_split(split_file, dataset), resumed_links  # None: a run begun before links were kept
    paths = [r.path for r in dataset.records]
    sides = [r.eye for r in dataset.records]
    found = linked_photographs(paths, cache_dir, progress and ctx.main, sides) if ctx.main else None
    links = distributed.from_main(ctx, found)
    recorded = recorded_links(dataset.records, links, MAX_LINKED)
    if split_file:
        split = read_split(split_file, dataset)
        if apart := linked_apart(split, [[dataset.records[k] for k in group] for group in links]):
            say(f"warning: {split_file} puts one photograph or eye in two splits under different patients "
                f"({len(apart)}: {_first('; '.join(' = '.join(a) for a in apart[:3]), len(apart), 3)}): the "
                "numbers of the later split would not be clean; without --split, train keeps such patients "
                "in one split")  # fmt: skip
        return split, recorded
    split = make_split(dataset, cfg.val_fraction, cfg.test_fraction, cfg.seed)
    split, linked = keep_linked_together(dataset, split, links)
    kept = [(names, where) for names, where in linked if where]
    if kept:
        sets = "; ".join(
            f"{' and '.join(g.split(':', 1)[1] for g in names)} ({where})" for names, where in kept[:5]
        )
        say(f"one photograph or eye under several patient ids ({len(kept)}), each set of patients kept in one split: "
            f"{_first(sets, len(kept), 5)}")  # fmt: skip
    if left := [names for names, where in linked if not where]:
        say(f"warning: {len(left)} set(s) of more than {MAX_LINKED} patients linked by photographs alike (the "
            f"largest: {max(map(len, left))}) left as the split put them: not one person's visits; something "
            "else looks alike (a camera's artefact?): see check-data's list")  # fmt: skip
    return split, recorded


def _first(listed: str, total: int, shown: int) -> str:
    return listed + (f"; and {total - shown} more" if total > shown else "")


@dataclass
class Step:
    """What one optimisation step uses, and a pass over the training eyes in a given order (an epoch)."""

    cfg: TrainConfig
    task: object  # tasks.SingleEye or BothEyes: batches and the loss
    net: nn.Module  # what runs forward and backward (DistributedDataParallel under torchrun)
    model: nn.Module  # the model itself, whose weights EMA averages
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    ema: AveragedModel | None
    loss_fn: nn.Module
    log_prior: torch.Tensor
    transform: object
    device: torch.device
    precision: str
    mean: list
    std: list

    def epoch(self, train_set, order, batch_size: int, starts) -> tuple[float, int, int, int]:
        """Train on the eyes `order` names, `batch_size` at a time from each of `starts` (a tqdm bar over
        the batches' first positions, disabled or not); returns the summed loss, the eyes of a class named right, those
        with a class, and the eyes seen."""
        cfg, device = self.cfg, self.device
        self.model.train()
        total_loss, correct, scored, seen = 0.0, 0, 0, 0
        for start in starts:
            idx = order[start : start + batch_size]
            x, mask, y = self.task.batch(train_set, idx, self.transform, device, self.mean, self.std,
                                         cfg.channels_last)  # fmt: skip
            mix = None
            if cfg.mixup:
                x, mix = mixup(x, cfg.mixup)
            extra = {}
            if train_set.soft is not None:
                extra["teacher"] = teacher_term(train_set.soft[idx].to(device), cfg.distill_weight,
                                                cfg.distill_all_eyes)  # fmt: skip
            with autocast(device, self.precision):
                loss, n_correct, n_scored = self.task.loss(
                    self.net, x, mask, y, self.loss_fn, self.log_prior, cfg.logit_adjust != 0, mix, **extra
                )
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            if self.ema:
                self.ema.update_parameters(self.model)
            total_loss += loss.item() * len(idx)
            correct += n_correct
            scored += n_scored
            seen += len(idx)
            starts.set_postfix(loss=f"{total_loss / seen:.4f}", acc=f"{correct / max(scored, 1):.3f}")
        return total_loss, correct, scored, seen


def class_loss(
    cfg: TrainConfig, labels: torch.Tensor, n_classes: int, device
) -> tuple[nn.Module, torch.Tensor]:
    """The class loss (cross-entropy, weighted by class where asked) and the log-prior its logits are
    shifted by under logit adjustment, from the training eyes' `labels` (-1: no class)."""
    counts = torch.bincount(labels[labels >= 0], minlength=n_classes).double().clamp_min(1)
    weights = None
    if cfg.class_weighting == "balanced":
        weights = (counts.sum() / (len(counts) * counts)).float().to(device)
    loss_fn = nn.CrossEntropyLoss(weight=weights, label_smoothing=cfg.label_smoothing)
    # Logit adjustment: train on logits + tau * log(prior) so the model itself is not biased to the
    # frequent classes; at inference the plain logits are used.
    log_prior = (cfg.logit_adjust * torch.log(counts / counts.sum())).float().to(device)
    return loss_fn, log_prior


def write_run_files(out: Path, cfg: TrainConfig, classes: list[str], info: dict, skipped: list[str]) -> None:
    """What a new run writes beside its checkpoints: its settings, how and where it ran, unreadable files."""
    write_config(out, cfg, classes)
    (out / "run_info.json").write_text(json.dumps(info, indent=2))
    if skipped:
        (out / "skipped_images.txt").write_text("\n".join(skipped) + "\n")


def write_config(out: Path, cfg: TrainConfig, classes: list[str]) -> None:
    (out / "config.json").write_text(json.dumps({"config": asdict(cfg), "classes": classes}, indent=2))


def shortened(cfg: TrainConfig, budget: dict, optimizer, scheduler, next_epoch: int) -> TrainConfig:
    """`cfg` with the epochs the budget chose, and the optimiser's learning rate for `next_epoch` on that
    shorter schedule (the scheduler's own lambda reads the new config from then on)."""
    cfg = replace(cfg, epochs=budget["epochs"])
    for group, base in zip(optimizer.param_groups, scheduler.base_lrs, strict=True):
        group["lr"] = base * lr_factor(cfg, next_epoch)
    return cfg


def record_budget(out: Path, cfg: TrainConfig, classes: list[str], budget: dict) -> None:
    """config.json holds the epochs the run will have; run_info.json how the budget chose them."""
    write_config(out, cfg, classes)
    info_path = out / "run_info.json"
    info = json.loads(info_path.read_text()) if info_path.is_file() else {}
    info_path.write_text(json.dumps(info | {"time_budget": budget}, indent=2))


def calibrate_best(
    best: Path, cfg: TrainConfig, task, val_set, dataset: Dataset, cache, device, precision
) -> None:
    """Calibrate the best checkpoint on the validation split (calibrate_checkpoint.py), from the best
    model's probabilities: a both-eye model's patients and eyes apart, a single-eye model's eyes with
    their fellow eyes for the fellow-eye weight."""
    best_model, meta = load_model(best, device)
    norm = meta["normalization"]
    if is_binocular(cfg.model):
        val = both_eyes_validation(task, best_model, val_set, norm, device, precision)
    else:
        prob, y_val = task.probabilities(best_model, val_set, norm["mean"], norm["std"], device, precision,
                                         cfg.channels_last)  # fmt: skip
        by_key = {r.key: r for r in dataset.records}
        predict = paths_predictor(best_model, cache, norm, device, precision)
        val = validation_eyes([by_key[n] for n in val_set.names], prob, y_val, dataset, predict)
    calibrate_on_validation(best, val, cfg.normal_class)


def resumed(out: Path) -> tuple[dict, dict]:
    """An interrupted run's resume state and what it saved of its settings (config, classes, links, budget)."""
    state = load_state(out / "resume.pt")
    return state, json.loads(state["meta"])


def refuse_to_overwrite(out: Path) -> tuple[None, dict]:
    """A new run's (no state, nothing saved), unless `out` holds a run already."""
    if (out / "resume.pt").exists():
        raise FileExistsError(
            f"{out}: already holds a run; use --resume to continue it or choose another --out"
        )
    return None, {}


def placed(model: nn.Module, task, cfg: TrainConfig, ctx, device) -> tuple[nn.Module, nn.Module, nn.Module]:
    """The model on its device and memory format; what trains (the model plus any training-only head); and
    what runs forward and backward (that, wrapped in DistributedDataParallel when distributed, compiled
    with --compile)."""
    model = model.to(device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    trainable = task.trainable(model).to(device)
    net = trainable
    if ctx.enabled:
        net = torch.nn.parallel.DistributedDataParallel(
            trainable, device_ids=[device] if device.type == "cuda" else None
        )
    if cfg.compile:
        net = compile_model(net)
    return model, trainable, net


def epoch_order(cfg: TrainConfig, train_set, epoch: int, ctx, local_batch: int):
    """This process's training indices for `epoch`. The order depends only on (seed, epoch), so a resumed
    run sees the same batches."""
    if cfg.sampler == "balanced":
        order = distributed.balanced_epoch_indices(train_set.labels, cfg.seed, epoch, ctx)
    else:
        order = distributed.epoch_indices(len(train_set), cfg.seed, epoch, ctx)
    if len(order) % local_batch == 1:
        order = order[:-1]  # a batch of one breaks batch normalisation
    return order


def restore(
    state: dict, trainable: nn.Module, optimizer, scheduler, ema
) -> tuple[int, float, int, list[dict]]:
    """Put an interrupted run back as it was after its last written epoch: weights, optimiser, schedule,
    random state, EMA; returns the next epoch, the best score and its epoch, and the log so far."""
    trainable.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["rng"])
    if ema:
        ema.load_state_dict(state["ema"])
    return state["epoch"] + 1, state["best"], state["best_epoch"], json.loads(state["history"])


def snapshot(
    trainable: nn.Module, optimizer, scheduler, ema, epoch: int, best: float, best_epoch: int, history: list,
    settings: dict,
) -> dict:  # fmt: skip
    """What `restore` puts back after `epoch` (0-based), and the run's `settings` (what `resumed` returns)."""
    return {
        "model": trainable.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
        "ema": ema.state_dict() if ema else None, "rng": torch.get_rng_state(), "epoch": epoch, "best": best,
        "best_epoch": best_epoch, "history": json.dumps(history), "meta": json.dumps(settings),
    }  # fmt: skip


def mean_nll(prob: np.ndarray, y: np.ndarray) -> float:
    """Cross-entropy of probabilities already made (validation's loss)."""
    return float(
        nn.functional.nll_loss(torch.log(torch.from_numpy(prob).clamp_min(1e-12)), torch.from_numpy(y))
    )


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
    save_every: float | None = None,
) -> Path:
    """Train a model on `data` into `out_dir`; returns the path of the best checkpoint.

    The checkpoints and the resume state are written after the first epoch, the last, and any epoch that
    ends `save_every` seconds or more after the previous write (None: every epoch on a CPU, 30 s on a
    GPU, where writing them every epoch would take a fifth of the time; benchmarks/checkpoint_write.py).
    An interrupted run resumes from the last write."""
    started = time.perf_counter()  # what --time-budget counts from
    out = Path(out_dir)
    state, saved = resumed(out) if resume else refuse_to_overwrite(out)
    if resume:
        cfg, classes, split_file = TrainConfig(**saved["config"]), saved["classes"], out / "split.csv"
    cfg.validate()
    out.mkdir(parents=True, exist_ok=True)
    seed_everything(cfg.seed)
    ctx, device = distributed.setup(resolve_device(cfg.device))
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed input size: let cuDNN pick the fastest kernels
    say = print if ctx.main else _quiet  # one voice, and one writer: rank 0

    dataset = load_dataset(data, classes)
    say(dataset.summary())
    if normal := normal_class_of(dataset.classes, cfg.normal_class):
        cfg = replace(cfg, normal_class=normal)  # as the data spells it: what evaluate and predict look up
    else:
        say(f"no class named {cfg.normal_class!r} among {', '.join(dataset.classes)}: no screening operating "
            "point ('referable = any disease'); name the class that is not referable with --normal-class")  # fmt: skip
    split, links = choose_split(
        dataset,
        cfg,
        split_file,
        resume,
        ctx,
        say,
        progress,
        cache_dir,
        saved.get("links"),
    )
    if cfg.init and not resume:
        cfg = replace(cfg, init=checkpoint_in(cfg.init, (BEST, PRETRAINED)))  # a run or pretrain folder
        check_held_out(cfg.init, data, split)
    if cfg.teacher:  # a teacher that learnt this run's validation or test eyes would pass on what it learnt
        cfg = replace(cfg, teacher=checkpoint_in(cfg.teacher))
        check_held_out(cfg.teacher, data, split, "distil")
    if ctx.main:
        write_split(split, dataset, out / "split.csv")
    say("split by patient:\n" + split_counts(dataset, split))
    if warning := thin_validation(dataset, split):
        say(warning)

    prep = Preprocessing(image_size=cfg.image_size, enhance=cfg.enhance)
    cache = ImageCache(prep, cache_dir)
    show = progress and ctx.main
    task = make_task(cfg, dataset, split, say, cache_dir)
    train_set = task.load_train(subset(dataset, split, "train"), cache, show, ctx.main)
    if cfg.crop_on_disc:
        from .discs import locate_discs

        train_set.discs = locate_discs(train_set.paths, cfg.image_size, cache_dir, show)
        say(
            f"optic disc located in {int(train_set.discs.isfinite().all(1).sum())} of {len(train_set)} training eyes"
        )
    val_part = subset(dataset, split, "val")
    val_set = task.load(val_part, cache, "val", show, ctx.main)
    if len(train_set) == 0 or len(val_set) == 0:
        raise ValueError(f"{data}: no readable images in the train or validation split")

    if cfg.batch_size % ctx.world:
        raise ValueError(f"batch_size {cfg.batch_size} must be divisible by the {ctx.world} processes")
    local_batch = cfg.batch_size // ctx.world  # the global batch stays cfg.batch_size
    # on a CPU, auto may time both precisions: the main process does, and every process follows it
    precision = distributed.from_main(ctx, resolve_precision(cfg.precision, device) if ctx.main else None)
    channels_last = cfg.channels_last
    say(f"training on {device.type}, {precision}" + (
        cpu_note() if cfg.precision == "auto" and device.type == "cpu" else ""
    ))  # fmt: skip
    if cfg.teacher:
        train_set.soft, line = teacher_probabilities(
            cfg.teacher, train_set.paths, dataset.classes, device, precision, cache_dir, show
        )
        unclassed = int((train_set.labels < 0).sum())
        say(line + (f"; on the {unclassed} eyes outside the classes too" if cfg.distill_all_eyes else ""))
    model, model_spec = task.build(cfg.model)
    if cfg.init and not resume:
        from .initial_weights import load_initial_weights

        say(load_initial_weights(model, cfg.init, cfg.model, dataset.classes))
    model, trainable, net = placed(model, task, cfg, ctx, device)
    optimizer = make_optimizer(cfg, trainable)
    ema = make_ema(model, cfg.ema)
    evaluated = ema.module if ema else model  # what is validated and saved
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda e: lr_factor(cfg, e))
    loss_fn, log_prior = class_loss(cfg, train_set.labels, len(dataset.classes), device)
    transform = augment.build(cfg.augment, cfg.image_size, cfg.crop_size, cfg.crop_on_disc)
    scaler = torch.amp.GradScaler("cuda", enabled=precision == "fp16")

    meta = {
        "model": model_spec,
        "classes": dataset.classes,
        "preprocessing": asdict(prep),
        "normalization": {"mean": list(DEFAULT_MEAN), "std": list(DEFAULT_STD)},
        "config": asdict(cfg),
        "data": str(Path(data).resolve()),
        "data_sha256": manifest_fingerprint(data),  # recognises a copy of the data moved elsewhere
        "split": split,
    }
    if links is not None:  # evaluate names held-out eyes with a twin elsewhere (held_out_links)
        meta["linked_photographs"] = links
    start_epoch, best, best_epoch, history = 0, -math.inf, -1, []
    budget = None  # the time budget's decision, once made (after the first epoch)
    if resume:
        start_epoch, best, best_epoch, history = restore(state, trainable, optimizer, scheduler, ema)
        budget = saved.get("budget")
        say(f"resuming {out} after epoch {start_epoch} of {cfg.epochs}")
    elif ctx.main:
        info = {
            "precision": precision,
            "device": str(device),
            "channels_last": channels_last,
            "processes": ctx.world,
        }
        write_run_files(out, cfg, dataset.classes, run_info(argv) | info, train_set.skipped + val_set.skipped)

    resumed_epochs = len(history)  # their pace was another session's, perhaps another machine's
    if save_every is None:
        save_every = 0.0 if device.type == "cpu" else GPU_SAVE_EVERY
    # the first epoch of each session writes (last_write -inf); best_weights: an improvement not yet written
    last_write, best_weights = -math.inf, None
    mean, std = meta["normalization"]["mean"], meta["normalization"]["std"]
    step = Step(cfg, task, net, model, optimizer, scaler, ema, loss_fn, log_prior, transform, device, precision,
                mean, std)  # fmt: skip
    stop = StopRequest()  # SIGTERM or Ctrl-C: finish the epoch, write it, stop (one process only:
    # under torchrun the processes could disagree on the epoch)
    with stop if not ctx.enabled else nullcontext():
        for epoch in range(start_epoch, cfg.epochs):
            if ctx.enabled and cfg.time_budget and epoch >= 1:  # the main process chose after the last epoch
                budget = distributed.from_main(ctx, budget)
                if budget is not None and budget["epochs"] != cfg.epochs:
                    cfg = shortened(cfg, budget, optimizer, scheduler, epoch)
            if epoch >= cfg.epochs:
                break  # the time budget shortened the run
            t0 = time.perf_counter()
            order = epoch_order(cfg, train_set, epoch, ctx, local_batch)
            bar = tqdm(range(0, len(order), local_batch), desc=f"epoch {epoch + 1}/{cfg.epochs}",
                       disable=not (progress and ctx.main))  # fmt: skip
            total_loss, correct, scored, seen = step.epoch(train_set, order, local_batch, bar)
            lr = optimizer.param_groups[0]["lr"]
            scheduler.step()
            total_loss, correct, scored, seen = distributed.sum_across(ctx, total_loss, correct, scored, seen)
            if not ctx.main:
                continue  # validation, logs and checkpoints are rank 0's job

            prob, y_val = task.probabilities(evaluated, val_set, mean, std, device, precision, channels_last)
            val = headline_metrics(y_val, prob)
            row = {
                "epoch": epoch + 1, "lr": lr, "train_loss": total_loss / seen, "train_accuracy": correct / max(scored, 1),
                "val_loss": mean_nll(prob, y_val), "val_accuracy": val["accuracy"],
                "val_balanced_accuracy": val["balanced_accuracy"], "val_macro_auc": val["macro_auc"],
                "seconds": round(time.perf_counter() - t0, 2), "peak_rss_mb": peak_rss_mb(),
            }  # fmt: skip
            history.append(row)
            _write_log(out / "metrics.csv", history)
            decided = budget_after_epoch(cfg.time_budget, cfg.epochs, budget, history, resumed_epochs, started,
                                         revise=not resume)  # fmt: skip
            if decided is not None:
                budget = decided
                cfg = shortened(cfg, budget, optimizer, scheduler, epoch + 1)
                meta["config"] = asdict(cfg)  # what this epoch's checkpoints and resume state say
                say(budget_line(budget))
                record_budget(out, cfg, dataset.classes, budget)
            score = val[cfg.select_metric]
            score = -math.inf if math.isnan(score) else score
            epoch_meta = meta | {"epoch": epoch + 1, "val_metrics": val}
            if score > best:
                best, best_epoch = score, epoch + 1
                best_weights = (weights_of(evaluated), epoch_meta)
            if epoch == cfg.epochs - 1 or time.perf_counter() - last_write >= save_every or stop.reason:
                settings = {
                    "config": asdict(cfg),
                    "classes": dataset.classes,
                    "links": links,
                    "budget": budget,
                }
                resume_state = snapshot(trainable, optimizer, scheduler, ema, epoch, best, best_epoch, history,
                                        settings)  # fmt: skip
                write_checkpoints(out, best_weights, (evaluated, epoch_meta), resume_state)
                last_write, best_weights = time.perf_counter(), None
            left = time_left(history[resumed_epochs:], cfg.epochs)
            print(epoch_line(row, cfg.epochs, best_epoch) + (f"  ({left})" if left else ""))
            stop.stop_if_asked(
                epoch + 1, cfg.epochs, out, f"continue with: eyescreen train --out {out} --resume"
            )
    if ctx.main and best_epoch > 0:
        calibrate_best(out / BEST, cfg, task, val_set, dataset, cache, device, precision)
    distributed.barrier(ctx)
    if ctx.enabled:  # DDP's reducer holds the process group: free it now, not at interpreter exit, where
        del step, net  # gloo's threads ended a process with SIGABRT (1 run in ~20 of test_distributed)
        gc.collect()
    distributed.teardown(ctx)
    if ctx.main:
        print(f"best epoch {best_epoch} ({cfg.select_metric} {best:.4f}); checkpoints in {out}")
    return out / BEST
