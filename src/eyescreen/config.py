"""Training configuration: one typed dataclass, named presets, command-line overrides."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields

from .pace import check_budget

# Allowed values of the settings that take a name; checked by `TrainConfig.validate` and offered by the CLI.
CHOICES = {
    "optimizer": ("adam", "adamw", "sgd"),
    "scheduler": ("cosine", "constant"),
    "augment": ("none", "fundus", "light"),
    "enhance": ("none", "clahe", "graham"),
    "class_weighting": ("none", "balanced"),
    "sampler": ("shuffle", "balanced"),
    "select_metric": ("accuracy", "balanced_accuracy", "macro_auc"),
    "precision": ("auto", "bf16", "fp32"),
    "pooling": ("mean", "max", "attention", "concat"),
    "two_diseases": ("exclude", "priority"),
}


def setting(default, meaning: str):
    """A training setting with what it does, for `eyescreen train --help`."""
    return field(default=default, metadata={"help": meaning})


@dataclass
class TrainConfig:
    model: str = setting("resnet18", "network (`eyescreen models` lists them)")
    image_size: int = setting(224, "side of the square the photographs are resized to, in pixels")
    enhance: str = setting("none", "structure-aware preprocessing: clahe (green-channel contrast), "
                           "graham (background subtraction of a blurred copy)")  # fmt: skip
    epochs: int = setting(40, "training epochs")
    # A cosine schedule must know its length before it starts: the first epoch measures this machine.
    time_budget: float = setting(0.0, "minutes the run may take from its start: after the first epoch, as many "
                                 "of the epochs asked as fit are scheduled, the learning rate still annealed "
                                 "to zero at the end (fewer again if the epochs slow); 0 = all epochs asked")  # fmt: skip
    batch_size: int = setting(32, "images per step (the global batch under torchrun)")
    optimizer: str = setting("adam", "optimiser")
    lr: float = setting(0.01, "peak learning rate")
    weight_decay: float = setting(0.0, "weight decay")
    scheduler: str = setting(
        "cosine", "learning-rate schedule: cosine (annealed to zero over all epochs) or constant"
    )
    warmup_epochs: int = setting(0, "epochs of linear learning-rate warm-up")
    label_smoothing: float = setting(0.0, "label smoothing of the cross-entropy")
    augment: str = setting("none", "training augmentation: fundus (flips, any rotation, scale, colour, gamma), "
                           "light (flips, ±15°)")  # fmt: skip
    class_weighting: str = setting("none", "balanced: loss weights inverse to class frequency")
    sampler: str = setting("shuffle", "balanced: each class drawn equally often")
    logit_adjust: float = setting(0.0, "tau of the logit-adjusted loss (Menon et al. 2021); 0 = off")
    select_metric: str = setting("accuracy", "validation metric that picks the best epoch")
    val_fraction: float = setting(0.1, "share of patients held out for validation")
    test_fraction: float = setting(0.1, "share of patients held out for test")
    seed: int = setting(0, "random seed of the split, the initial weights and the batches")
    precision: str = setting(
        "auto", "auto: bf16 where the hardware has it (on a CPU: and it measured faster), else fp32"
    )
    channels_last: bool = setting(True, "channels-last memory layout (faster convolutions)")
    device: str = setting("auto", "auto | cpu | cuda | cuda:N")
    pooling: str = setting("attention", "both-eye models: how the two eyes' features are combined")
    mirror_left: bool = setting(
        True, "both-eye models: flip the left eye so both discs fall on the same side"
    )
    two_diseases: str = setting("exclude", "both-eye models: a patient with two different diseases")
    normal_class: str = setting(
        "normal", "the class that is not referable, for the screening operating point"
    )
    init: str = setting("", "start from these weights: `eyescreen pretrain` output or a trained checkpoint")
    # Measured slower on one H100 for graham-findings-256 (benchmarks/RESULTS.md): kept for other models.
    compile: bool = setting(False, "torch.compile the model (slow to start; measure before relying on it)")
    ema: float = setting(0.0, "decay per step of an exponential moving average of the weights, which is "
                         "validated and saved; 0 = off")  # fmt: skip
    findings: str = setting(
        "",
        "manifest column(s), comma-separated, predicted by a training-only head: ';'-separated "
        "findings, or numbers (e.g. age: above each decile of the training eyes)",
    )
    findings_weight: float = setting(0.5, "weight of the findings loss beside the class loss")
    mixup: float = setting(
        0.0, "alpha of Beta(alpha, alpha): train on blends of two eyes and their targets; 0 = off"
    )
    # Fine detail of a large image at the cost of a small one: the network pools globally.
    crop_size: int = setting(0, "train on random crops of this many pixels, cut at the image's own scale "
                             "(validation and prediction see whole images); 0 = whole images")  # fmt: skip
    # Glaucoma is judged at the disc, which a random crop mostly misses.
    crop_on_disc: float = setting(0.0, "share of those crops drawn to hold the optic disc (found by "
                                  "anatomy.locate); 0 = all anywhere")  # fmt: skip
    teacher: str = setting("", "distil: also train towards this trained model's probabilities (a run folder "
                           "or checkpoint of the same data and classes; an `eyescreen ensemble` too)")  # fmt: skip
    distill_weight: float = setting(1.0, "weight of the cross-entropy to the teacher's probabilities beside "
                                    "the class loss")  # fmt: skip
    # The teacher learnt the training eyes' labels; on eyes outside the classes it never saw one, so its
    # probabilities there are judgements, not recollections.
    distill_all_eyes: bool = setting(False, "also distil on the training patients' eyes outside the classes "
                                     "(those --findings brings in): the teacher's probabilities are their only "
                                     "class target")  # fmt: skip

    def validate(self) -> TrainConfig:
        for name, allowed in CHOICES.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name}={getattr(self, name)!r}: choose one of {', '.join(allowed)}")
        for name in ("epochs", "batch_size", "image_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        if not 0 <= self.ema < 1:
            raise ValueError("ema must be in [0, 1): the decay per optimiser step, 0 = off")
        if not 0 <= self.crop_size < self.image_size:
            raise ValueError(
                f"crop_size {self.crop_size} must be 0 (whole images) or smaller than image_size {self.image_size}"
            )
        if not 0 <= self.crop_on_disc <= 1:
            raise ValueError(
                "crop_on_disc must be in [0, 1]: the share of training crops drawn to hold the disc"
            )
        if self.crop_on_disc and not self.crop_size:
            raise ValueError("crop_on_disc needs crop_size: it says where training crops are cut")
        check_budget(self.time_budget)
        if self.mixup < 0:
            raise ValueError("mixup must be zero (off) or more: the alpha of Beta(alpha, alpha)")
        if self.findings_weight < 0:
            raise ValueError("findings_weight must be zero or more")
        if self.distill_weight < 0:
            raise ValueError("distill_weight must be zero or more")
        if self.distill_all_eyes and not self.findings:
            raise ValueError(
                "distill_all_eyes distils on the eyes --findings brings in: without --findings there are none"
            )
        if self.distill_all_eyes and not self.teacher:
            raise ValueError(
                "distill_all_eyes needs a --teacher: it says which eyes the teacher's probabilities train"
            )
        if self.teacher and self.mixup:
            raise ValueError("--teacher gives each photograph its own target; it cannot be used with --mixup")
        if not 0 <= self.warmup_epochs < max(self.epochs, 1):
            raise ValueError(
                f"warmup_epochs ({self.warmup_epochs}) must be smaller than epochs ({self.epochs}): "
                "give more --epochs, or --warmup-epochs 0"
            )
        return self


# The fast recipe (benchmarks/RESULTS.md, issue 7): the seed recipe with the levers that helped within
# 10 epochs: Graham background subtraction (the big one) and AdamW at a sane learning rate with
# warm-up and label smoothing, at 128 px. Without augmentation longer runs over-fit; logit adjustment
# is left to the decision rule fitted on validation after training. 6 minutes on 2 CPU cores.
_GRAHAM = {
    "image_size": 128,
    "epochs": 10,
    "optimizer": "adamw",
    "lr": 2e-3,
    "weight_decay": 0.05,
    "warmup_epochs": 1,
    "label_smoothing": 0.1,
    "enhance": "graham",
    "select_metric": "macro_auc",
}


PRESETS: dict[str, dict] = {
    # The reference study's recipe, exactly: 224 px, no augmentation, Adam lr 0.01, cosine annealing
    # over 40 epochs, cross-entropy, batch 32, best epoch by validation accuracy.
    "seed": {},
    # Our first from-scratch screening recipe (issue 7, benchmarks/RESULTS.md): the seed recipe plus what
    # helps on small, imbalanced fundus data: AdamW at a sane learning rate with warm-up, fundus
    # augmentation, Graham background subtraction, logit-adjusted loss for the rare classes, label
    # smoothing, and the best epoch chosen by validation macro-AUC (accuracy rewards "all normal").
    "screen": {
        "epochs": 30,
        "optimizer": "adamw",
        "lr": 2e-3,
        "weight_decay": 0.05,
        "warmup_epochs": 2,
        "label_smoothing": 0.1,
        "augment": "fundus",
        "enhance": "graham",
        "logit_adjust": 1.0,
        "select_metric": "macro_auc",
    },
    "graham": _GRAHAM,
    # The best recipe found on validation (benchmarks/RESULTS.md, issue 7): `graham` with fundus
    # augmentation, which stops the over-fitting, so that it can train four times longer. 25 minutes on
    # 2 CPU cores for ODIR-5K.
    "graham-augment": {**_GRAHAM, "epochs": 40, "augment": "fundus"},
    # The best recipe found (benchmarks/RESULTS.md, issue 7), and the default where the data allows it:
    # `graham-augment` plus the findings head on the manifest's `keywords` column of per-eye diagnoses,
    # which also brings in the eyes outside the classes. 60 epochs: still rising at 40 with the extra
    # data. 55 minutes on 2 CPU cores for ODIR-5K.
    "graham-findings": {**_GRAHAM, "epochs": 60, "augment": "fundus", "findings": "keywords"},
    # The best recipe found on validation, and the default on a GPU (benchmarks/RESULTS.md, issue 7):
    # `graham-findings` at the photographs' own 256 px, trained twice as long. At 128 px more epochs
    # did not help (100 epochs: level); at 256 px, 120 epochs did (one seed, +0.05 validation macro-AUC
    # over 60). 4 minutes on one H200 GPU; on 2 CPU cores an epoch takes 3 minutes (6 hours in all).
    "graham-findings-256": {
        **_GRAHAM,
        "image_size": 256,
        "epochs": 120,
        "augment": "fundus",
        "findings": "keywords",
    },
    # `graham-findings-256` at half the width (resnet18-half, 32 to 256 channels), for a CPU with an
    # afternoon (benchmarks/RESULTS.md, "Half the width at 256 px"): a quarter of the compute, nearly the
    # accuracy on ODIR-5K (test 0.857-0.869 over seeds 1-3 against the full width's 0.864-0.875 on a
    # GPU). 2.1-3.3 hours on 2 CPU cores; on a GPU, graham-findings-256.
    "graham-findings-256-half": {
        **_GRAHAM,
        "model": "resnet18-half",
        "image_size": 256,
        "epochs": 120,
        "augment": "fundus",
        "findings": "keywords",
    },
    # The default on a GPU where the data has no diagnoses column (benchmarks/RESULTS.md, issue 7):
    # `graham-augment` at 256 px for 120 epochs, as `graham-findings-256` is to `graham-findings` (one
    # seed: validation 0.857 against 0.787-0.803 at 128 px). 4 minutes on one H200 GPU.
    "graham-augment-256": {**_GRAHAM, "image_size": 256, "epochs": 120, "augment": "fundus"},
    # The 256-px photographs on a CPU (benchmarks/RESULTS.md, issue 7): `graham-findings` at 256 px, but
    # each training step sees a random 160-px crop at the image's own scale (validation and prediction
    # see whole images). Fine lesions stay as sharp as at 256 px for 1.6 times the cost of a 128-px
    # step: 77 minutes on 2 CPU cores for ODIR-5K.
    "graham-findings-crop": {
        **_GRAHAM,
        "image_size": 256,
        "crop_size": 160,
        "epochs": 60,
        "augment": "fundus",
        "findings": "keywords",
    },
    # The second stage of the best two-stage recipe (benchmarks/RESULTS.md, issue 7): a trained
    # `graham-findings` run (`--init RUN/best.safetensors`) fine-tuned at 224 px for 15 epochs at a
    # quarter of its learning rate. Train small and fast, then look closer. 37 minutes on 2 CPU cores.
    "finetune-224": {
        **_GRAHAM,
        "image_size": 224,
        "epochs": 15,
        "lr": 5e-4,
        "augment": "fundus",
        "findings": "keywords",
    },
    # A few minutes on a CPU, for demos and smoke tests on small data.
    "quick": {
        "image_size": 128,
        "epochs": 12,
        "batch_size": 16,
        "optimizer": "adamw",
        "lr": 1e-3,
        "weight_decay": 1e-4,
        "select_metric": "balanced_accuracy",
    },
}


# What each preset is for, in a line, for `eyescreen presets` (the comments above say why).
PRESET_PURPOSES = {
    "seed": "the reference study's recipe, exactly (224 px, Adam 0.01, cosine over 40 epochs, no augmentation)",
    "screen": "the first from-scratch screening recipe; superseded by graham-findings",
    "graham": "Graham background subtraction and AdamW at 128 px for 10 epochs: the fast recipe",
    "graham-augment": "graham with fundus augmentation for 40 epochs; the best without a diagnoses column on a CPU",
    "graham-augment-256": "graham-augment at 256 px for 120 epochs: the best without a diagnoses column, for a GPU",
    "graham-findings": "graham-augment plus the findings head on a diagnoses column, 60 epochs",
    "graham-findings-256": "graham-findings at 256 px for 120 epochs: the best found, for a GPU",
    "graham-findings-256-half": "graham-findings-256 at half the width: nearly its accuracy on a CPU in an afternoon (2.1-3.3 h on 2 cores)",
    "graham-findings-crop": "graham-findings at 256 px, each training step on a 160-px crop",
    "finetune-224": "fine-tunes a trained graham-findings run at 224 px for 15 epochs",
    "quick": "demos and smoke tests on small data",
}


def preset_changes(name: str) -> dict:
    """The settings preset `name` changes from TrainConfig's defaults (which are the `seed` recipe's)."""
    settings, defaults = preset_settings(name), TrainConfig()
    return {
        f.name: getattr(settings, f.name)
        for f in fields(TrainConfig)
        if getattr(settings, f.name) != getattr(defaults, f.name)
    }


# The best recipes found on validation (benchmarks/RESULTS.md): on a GPU, the best of all; on a CPU, the
# best that trains within the hour. Both need a manifest column of per-eye diagnoses, and were measured
# on single-eye models. Otherwise `eyescreen train` falls back to the best recipe that trains on any
# `image,label` manifest: at 256 px on a GPU for a single-eye model, else at 128 px (a both-eye model was
# measured neither at 256 px nor with the findings head).
DEFAULT_PRESET = "graham-findings"
GPU_PRESET = "graham-findings-256"
FALLBACK_PRESET = "graham-augment"
GPU_FALLBACK_PRESET = "graham-augment-256"
CPU_AFTERNOON_PRESET = "graham-findings-256-half"  # nearly the GPU default's accuracy in 2.1-3.3 h, 2 cores


def default_preset(data, model: str | None = None, device: str = "cpu") -> tuple[str, str]:
    """The preset `eyescreen train` uses when none is named, and why, for this data, model and device."""
    from .data import manifest_columns
    from .inference import resolve_device
    from .models import is_binocular

    column = PRESETS[DEFAULT_PRESET]["findings"]
    on_gpu = resolve_device(device).type == "cuda"
    has_column = column in manifest_columns(data)
    if model and is_binocular(model):
        add = f"--findings {column}" if has_column else "--findings COLUMN, a column of per-eye diagnoses"
        return (
            FALLBACK_PRESET,
            f"the findings head is not measured to help a both-eye model; add it with {add}",
        )
    if not has_column:
        why = f"no {column!r} column of per-eye diagnoses for the findings head"
        if on_gpu:
            return GPU_FALLBACK_PRESET, why + "; on a GPU, at 256 px for 120 epochs"
        return FALLBACK_PRESET, why + f"; on a CPU, at 128 px (on a GPU: {GPU_FALLBACK_PRESET})"
    why = f"the manifest's {column!r} column feeds the findings head"
    if on_gpu:
        return GPU_PRESET, why + "; on a GPU, at 256 px for 120 epochs"
    return DEFAULT_PRESET, why + (f"; on a CPU, at 128 px, within the hour (on a GPU: {GPU_PRESET}; "
                                  f"on a CPU with an afternoon: {CPU_AFTERNOON_PRESET})")  # fmt: skip


FINETUNE_PRESETS = {"finetune-224"}  # they start from a trained run: `--init` is required


def preset(name: str, **overrides) -> TrainConfig:
    """The settings of preset `name`, with `overrides` (None = keep the preset's). A fine-tuning preset
    needs `init`, the run it continues: asked for here, so the CLI and Python callers fail alike."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; available: {', '.join(PRESETS)}")
    values = {**PRESETS[name], **{k: v for k, v in overrides.items() if v is not None}}
    if name in FINETUNE_PRESETS and not values.get("init"):
        raise ValueError(
            f"preset {name} fine-tunes a trained model: give --init RUN/best.safetensors "
            f"(a run of {DEFAULT_PRESET}, the first stage)"
        )
    return TrainConfig(**values).validate()


def preset_settings(name: str) -> TrainConfig:
    """What preset `name` sets, for display (a fine-tuning preset without its `init`)."""
    return TrainConfig(**PRESETS[name])


def config_fields() -> list[dataclasses.Field]:
    return list(fields(TrainConfig))


def from_dict(values: dict) -> TrainConfig:
    known = {f.name for f in fields(TrainConfig)}
    return TrainConfig(**{k: v for k, v in values.items() if k in known})
