"""The `eyescreen` command line: every subcommand, its options and what each is for."""

from __future__ import annotations

import argparse
from dataclasses import MISSING

from .config import (
    CHOICES,
    DEFAULT_PRESET,
    FALLBACK_PRESET,
    GPU_FALLBACK_PRESET,
    GPU_PRESET,
    PRESETS,
    config_fields,
)


def _add_config_overrides(p: argparse.ArgumentParser) -> None:
    group = p.add_argument_group("training settings (override the preset)")
    for f in config_fields():
        flag = option(f.name)
        default = f.default if f.default is not MISSING else None
        # What the default presets set, so the help matches a plain `eyescreen train`.
        shown = []
        for name in (DEFAULT_PRESET, GPU_PRESET, FALLBACK_PRESET, GPU_FALLBACK_PRESET):
            value = PRESETS[name].get(f.name, default)
            shown.append((name, "unset" if value == "" else value))
        if len({value for _, value in shown}) == 1:
            default = f"{shown[0][1]} in the default presets"
        else:
            default = ", ".join(f"{value} in {name}" for name, value in shown)
        meaning = f"{f.metadata['help']} ({default})"
        if f.type in ("bool", bool):
            group.add_argument(
                flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None, help=meaning
            )
        else:
            kind = {"int": int, "float": float}.get(str(f.type), str)
            group.add_argument(
                flag, dest=f.name, type=kind, default=None, choices=CHOICES.get(f.name), help=meaning
            )


def option(setting: str) -> str:
    """The `train` option of a training setting: image_size -> --image-size."""
    return "--" + setting.replace("_", "-")


def as_flag(setting: str, value) -> str:
    """A training setting's value as the `train` option that sets it (booleans: --x / --no-x)."""
    if isinstance(value, bool):
        return option(setting) if value else "--no-" + option(setting)[2:]
    return f"{option(setting)} {value}"


def config_overrides(args) -> dict:
    return {f.name: getattr(args, f.name) for f in config_fields() if getattr(args, f.name) is not None}


WORKFLOW = """\
a first run:      eyescreen demo
your own data:    eyescreen check-data DATA            (a manifest CSV, or a folder per class)
                  eyescreen train --data DATA --out runs/mine
                  eyescreen evaluate --checkpoint runs/mine/best.safetensors
new photographs:  eyescreen predict --checkpoint runs/mine/best.safetensors PHOTOS/
                  eyescreen explain --checkpoint runs/mine/best.safetensors PHOTOS/
                  eyescreen serve --checkpoint runs/mine/best.safetensors
each command's options: eyescreen COMMAND --help"""


def count(value: str) -> int:
    """A whole number of at least 1: a batch size, a sample, epochs, workers, resamples."""
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a whole number") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"{n}: must be at least 1")
    return n


def port(value: str) -> int:
    """A TCP port to listen on."""
    n = count(value)
    if n > 65535:
        raise argparse.ArgumentTypeError(f"{n}: a port is at most 65535")
    return n


def pair_pattern(value: str) -> str:
    """A naming pattern for `--pairs`, checked before any file is read."""
    from .eye_names import checked_pattern

    try:
        return checked_pattern(value)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def checkpoint_file(value: str) -> str:
    """A run folder stands for the best checkpoint in it, as `train` and `ensemble` write it."""
    from .checkpoint import checkpoint_in

    return checkpoint_in(value)


def any_checkpoint_file(value: str) -> str:
    """A run folder or a `pretrain` folder stands for the checkpoint in it."""
    from .checkpoint import BEST, PRETRAINED, checkpoint_in

    return checkpoint_in(value, (BEST, PRETRAINED))


def _checkpoint(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, type=checkpoint_file,
                   help="a trained model: RUN/best.safetensors, or the run folder RUN")  # fmt: skip


def _training_data(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", help="the checkpoint's training data, moved or on another machine (default: "
                   "where it was trained)")  # fmt: skip


def _calibration_options(p: argparse.ArgumentParser) -> None:
    """What fitting the calibration on the validation split takes (`calibrate`, `ensemble`)."""
    p.add_argument(
        "--normal-class", default="normal", help="the class that is not referable (default: normal)"
    )
    _training_data(p)
    _cache_dir(p)
    _device(p)
    _no_progress(p)


def _cache_dir(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cache-dir", help="where preprocessed images are cached (default: ~/.cache/eyescreen, "
                   "or $EYESCREEN_CACHE)")  # fmt: skip


def _device(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", help="auto (a GPU if there is one) | cpu | cuda | cuda:N")


def _no_progress(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--no-progress",
        action="store_true",
        help="no progress bars (there are none anyway where the output is not a terminal: a log file, a pipe)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="eyescreen",
        description="Screen fundus photographs for eye disease: train from scratch on your own images, "
        "evaluate on held-out patients, predict, explain with heatmaps, serve a web page.",
        epilog=WORKFLOW,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a classifier from scratch on a manifest CSV or class folders")
    p.add_argument("--data", help="manifest CSV (image,label[,patient_id,eye]) or root/<class>/ folder "
                   "(with --resume, default: the data the run started on)")  # fmt: skip
    p.add_argument("--out", required=True, help="run directory (checkpoints, split, logs)")
    p.add_argument("--preset", choices=sorted(PRESETS),
                   help=f"training recipe (default: {DEFAULT_PRESET} on a CPU, {GPU_PRESET} on a GPU, where the "
                        f"manifest has a {PRESETS[DEFAULT_PRESET]['findings']!r} column of diagnoses and the model "
                        f"is single-eye; without that column {FALLBACK_PRESET} on a CPU, {GPU_FALLBACK_PRESET} on a "
                        f"GPU; {FALLBACK_PRESET} for a both-eye model; seed = the reference study's; finetune-224 = "
                        f"the second stage, with --init RUN/best.safetensors)")  # fmt: skip
    p.add_argument(
        "--classes", help="comma-separated classes to use, in this order (default: all in the data)"
    )
    p.add_argument("--split", help="reuse a split file (image,split) instead of making a new one")
    p.add_argument("--resume", action="store_true", help="continue the interrupted run in --out")
    p.add_argument("--save-every", type=float, metavar="SECONDS",
                   help="write the checkpoints and the resume state at most this often (and after the first "
                        "and last epochs; an interrupted run resumes from the last write); default: every "
                        "epoch on a CPU, every 30 s on a GPU")  # fmt: skip
    _cache_dir(p)
    _no_progress(p)
    _add_config_overrides(p)

    p = sub.add_parser("evaluate", help="metrics, confidence intervals and a report for a checkpoint")
    _checkpoint(p)
    p.add_argument("--data", help="manifest or folder (default: the data the checkpoint was trained on)")
    p.add_argument("--split", help="split file (default: the split stored in the checkpoint)")
    p.add_argument("--subset", default="test", choices=["train", "val", "test", "all"],
                   help="which patients of the split to score (default: test; all: every row of --data)")  # fmt: skip
    p.add_argument("--out", help="report directory (default: next to the checkpoint)")
    p.add_argument("--bootstrap", type=count, default=1000, help="bootstrap resamples for the intervals")
    p.add_argument("--by", metavar="COLUMN",
                   help="also score each subgroup of this manifest column apart (sex, site, camera; a numeric "
                   "column such as age by quartile): OUT/subgroups-COLUMN.md and .csv")  # fmt: skip
    p.add_argument(
        "--tta",
        nargs="?",
        const="flips",
        choices=("flips", "dihedral"),
        help="test-time augmentation: average the logits over flipped copies (`--tta`, `--tta flips`) or "
        "over the 8 quarter turns and mirror images (`--tta dihedral`)",
    )
    _cache_dir(p)
    _device(p)
    _no_progress(p)

    p = sub.add_parser(
        "calibrate",
        help="fit temperature, decision rule, referable threshold and fellow-eye weight on the validation split",
    )
    _checkpoint(p)
    _calibration_options(p)

    p = sub.add_parser("predict", help="predict classes for image files or folders into a CSV")
    p.add_argument("inputs", nargs="+", help="image files and/or folders (searched recursively)")
    _checkpoint(p)
    p.add_argument("--out", default="predictions.csv", help="the CSV to write (default: predictions.csv)")
    p.add_argument(
        "--pairs", action="store_true", help="pair left/right files by name and write one row per patient"
    )
    p.add_argument(
        "--pair-pattern",
        type=pair_pattern,
        help="regular expression with groups 'id' and 'side' matched on file stems",
    )
    p.add_argument("--batch-size", type=count, default=32, help="images read and predicted at a time")
    p.add_argument(
        "--resume",
        action="store_true",
        help="keep the rows of an interrupted run into --out (same checkpoint) and predict only the rest",
    )
    _device(p)
    _no_progress(p)

    p = sub.add_parser("explain", help="CAM heatmaps over the fundus for files, folders or a data split")
    p.add_argument("inputs", nargs="*", help="image files and/or folders; or use --subset")
    _checkpoint(p)
    p.add_argument(
        "--subset",
        choices=["train", "val", "test"],
        help="explain this split of the checkpoint's data (true labels known: gallery by true class)",
    )
    _training_data(p)
    p.add_argument(
        "--method", default="gradcam", help="gradcam, gradcam++, layercam, hirescam, scorecam, eigencam"
    )
    p.add_argument("--target", default="predicted", help="'predicted' or a class name to explain")
    p.add_argument(
        "--pair-pattern",
        type=pair_pattern,
        help="a both-eye model's files: regular expression with groups 'id' and 'side' matched on file stems",
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="keep what an interrupted run into --out explained (same checkpoint, method, target); do the rest",
    )
    p.add_argument(
        "--evaluate",
        action="store_true",
        help="with --subset: deletion/insertion AUC and the randomisation sanity check for each method",
    )
    p.add_argument(
        "--methods",
        default="gradcam,gradcam++,layercam,hirescam,eigencam",
        help="methods compared by --evaluate (comma-separated)",
    )
    p.add_argument(
        "--anatomy",
        action="store_true",
        help="with --subset: share of the map on the optic disc, the macula and the rest, per true class",
    )
    p.add_argument(
        "--limit",
        type=count,
        help="--evaluate / --anatomy use a fixed sample of this many images (200 / all); "
        "of a both-eye model, this many patients (100 / all)",
    )
    p.add_argument("--out", help="default: with --subset S, beside the checkpoint, RUN/explain-S (RUN/faithfulness-S "
                   "with --evaluate, RUN/anatomy-S with --anatomy), as evaluate writes RUN/eval-S; else ./explanations")  # fmt: skip
    p.add_argument("--batch-size", type=count, default=16, help="images explained at a time")
    _cache_dir(p)
    _device(p)
    _no_progress(p)

    p = sub.add_parser("demo", help="train, evaluate and report on the sample bundled with eyescreen")
    p.add_argument("--out", default="runs/demo", help="run directory (default: runs/demo)")
    p.add_argument("--epochs", type=count, help="override the quick preset's epochs")
    p.add_argument("--model", help="override the quick preset's model")
    _cache_dir(p)
    _no_progress(p)

    p = sub.add_parser("export", help="export a checkpoint for other runtimes (ONNX)")
    _checkpoint(p)
    p.add_argument("--format", default="onnx", choices=["onnx"], help="the runtime format (onnx)")
    p.add_argument("--out", help="output file (default: next to the checkpoint, .onnx)")

    p = sub.add_parser("check-data", help="data-health report: counts, duplicates, unreadable files, sizes")
    p.add_argument("data", nargs="?", help="manifest CSV or root/<class>/ folder")
    p.add_argument("--data", dest="data_option", metavar="DATA", help="the same, as `train` takes it")
    p.add_argument("--classes", help="comma-separated classes to count (default: all in the data)")
    p.add_argument("--split", help="also count per split and check no patient is in two splits")
    p.add_argument("--json", help="also write the report as JSON here")
    _no_progress(p)

    p = sub.add_parser(
        "pretrain", help="self-supervised pre-training (SimCLR) on photographs, labelled or not"
    )
    p.add_argument("data", nargs="*", help="manifests (every row, with or without a label) and/or folders")
    p.add_argument("--data", dest="data_option", metavar="DATA", action="append", default=[],
                   help="the same, as `train` takes it (repeatable)")  # fmt: skip
    p.add_argument("--out", required=True, help="run directory (backbone weights for train --init, logs)")
    p.add_argument("--model", default="resnet18", help="network, as train's --model (default: resnet18)")
    p.add_argument(
        "--image-size", type=int, default=128, help="pixels, as the fine-tuning run (default: 128)"
    )
    p.add_argument("--enhance", default="none", choices=["none", "clahe", "graham"],
                   help="preprocessing, as the fine-tuning run (default: none)")  # fmt: skip
    p.add_argument("--epochs", type=count, default=20, help="(default: 20)")
    p.add_argument("--batch-size", type=count, default=64, help="pairs of views per step (default: 64)")
    p.add_argument("--lr", type=float, default=1e-3, help="peak learning rate (default: 1e-3)")
    p.add_argument("--temperature", type=float, default=0.2, help="of the NT-Xent loss")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    p.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp32"],
                   help="auto: bf16 where the hardware has it (on a CPU: and it measured faster), else fp32")  # fmt: skip
    _device(p)
    p.add_argument("--holdout-split", default="",
                   help="split file of the fine-tuning run (train's split.csv): its validation and test "
                        "patients' photographs are left out, so they stay unseen")  # fmt: skip
    p.add_argument("--time-budget", type=float, default=0.0, metavar="MINUTES",
                   help="minutes the run may take from its start: after the first epoch, as many of the epochs "
                        "as fit, the learning-rate schedule shortened to end with them (fewer again if the epochs "
                        "slow; default: 0, no limit)")  # fmt: skip
    p.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")
    _cache_dir(p)
    _no_progress(p)

    p = sub.add_parser("serve", help="web page and JSON API for screening, with Grad-CAM overlays")
    p.add_argument("--checkpoint", type=checkpoint_file,
                   help="model to serve (default: the demo model, trained first if needed)")  # fmt: skip
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: all interfaces)")
    p.add_argument("--port", type=port, default=8000, help="(default: 8000)")
    p.add_argument("--workers", type=count, default=2, help="requests computed at once (one model copy each)")
    p.add_argument("--max-upload-mb", type=float, default=20.0, help="largest accepted image file")
    _device(p)

    p = sub.add_parser("compare", help="is model B better than A on the same patients? paired intervals")
    p.add_argument("a", help="evaluation of model A: its folder (from `evaluate`) or its predictions.csv")
    p.add_argument("b", help="evaluation of model B, on the same data and split")
    p.add_argument("--bootstrap", type=count, default=2000, help="patient resamples (default: 2000)")
    p.add_argument("--json", help="also write the comparison as JSON here")

    p = sub.add_parser(
        "ensemble", help="several trained models as one checkpoint: class scores averaged, then calibrated"
    )
    p.add_argument("checkpoints", nargs="+", type=checkpoint_file,
                   help="two or more checkpoints (or run folders) of the same classes, preprocessing and split "
                   "(runs of one recipe with other --seed values, say), all single-eye or all both-eye")  # fmt: skip
    p.add_argument("--out", required=True, help="run directory: OUT/best.safetensors, evaluated like a run's")
    p.add_argument("--no-calibrate", action="store_true",
                   help="skip fitting temperature, decision rule, referable threshold and fellow-eye weight on "
                        "the validation split (they need the training data)")  # fmt: skip
    _calibration_options(p)

    p = sub.add_parser("info", help="what a checkpoint is: model, classes, recipe, data, validation numbers")
    p.add_argument("checkpoint", type=any_checkpoint_file,
                   help="a checkpoint (RUN/best.safetensors, or RUN; or what `pretrain` wrote)")  # fmt: skip
    p.add_argument("--json", action="store_true", help="print it as JSON")

    sub.add_parser("models", help="list the available models")
    sub.add_parser("presets", help="show the training presets")
    return parser
