"""The `eyescreen` command: every subcommand is a thin call into the modules of the package."""

from __future__ import annotations

import argparse
import sys
from dataclasses import MISSING
from functools import partial
from pathlib import Path

from .checkpoint import CheckpointError
from .config import (
    CHOICES,
    DEFAULT_PRESET,
    FALLBACK_PRESET,
    FINETUNE_PRESETS,
    GPU_PRESET,
    PRESET_PURPOSES,
    PRESETS,
    config_fields,
    default_preset,
    preset,
    preset_changes,
)
from .data import DataError, parse_classes
from .models import describe_model, list_models
from .preprocess import ImageError
from .stopping import StopRequested


def _add_config_overrides(p: argparse.ArgumentParser) -> None:
    group = p.add_argument_group("training settings (override the preset)")
    for f in config_fields():
        flag = "--" + f.name.replace("_", "-")
        default = f.default if f.default is not MISSING else None
        # What the default presets set, so the help matches a plain `eyescreen train`.
        shown = []
        for name in (DEFAULT_PRESET, FALLBACK_PRESET):
            value = PRESETS[name].get(f.name, default)
            shown.append((name, "unset" if value == "" else value))
        if shown[0][1] == shown[1][1]:
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


def _overrides(args) -> dict:
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


def _checkpoint(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, help="a trained model: RUN/best.safetensors")


def _cache_dir(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cache-dir", help="where preprocessed images are cached (default: ~/.cache/eyescreen, "
                   "or $EYESCREEN_CACHE)")  # fmt: skip


def _device(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", help="auto (a GPU if there is one) | cpu | cuda | cuda:N")


def _no_progress(p: argparse.ArgumentParser) -> None:
    p.add_argument("--no-progress", action="store_true", help="no progress bars (for logs and scripts)")


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
                        f"is single-eye, else {FALLBACK_PRESET}; seed = the reference study's; finetune-224 = the "
                        f"second stage, with --init RUN/best.safetensors)")  # fmt: skip
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
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for the intervals")
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
    p.add_argument(
        "--normal-class", default="normal", help="the class that is not referable (default: normal)"
    )
    _cache_dir(p)
    _device(p)

    p = sub.add_parser("predict", help="predict classes for image files or folders into a CSV")
    p.add_argument("inputs", nargs="+", help="image files and/or folders (searched recursively)")
    _checkpoint(p)
    p.add_argument("--out", default="predictions.csv", help="the CSV to write (default: predictions.csv)")
    p.add_argument(
        "--pairs", action="store_true", help="pair left/right files by name and write one row per patient"
    )
    p.add_argument(
        "--pair-pattern", help="regular expression with groups 'id' and 'side' matched on file stems"
    )
    p.add_argument("--batch-size", type=int, default=32, help="images read and predicted at a time")
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
    p.add_argument(
        "--method", default="gradcam", help="gradcam, gradcam++, layercam, hirescam, scorecam, eigencam"
    )
    p.add_argument("--target", default="predicted", help="'predicted' or a class name to explain")
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
        "--limit", type=int, help="--evaluate / --anatomy use a fixed sample of this many images (200 / all)"
    )
    p.add_argument("--out", help="default: with --subset S, beside the checkpoint, RUN/explain-S (RUN/faithfulness-S "
                   "with --evaluate, RUN/anatomy-S with --anatomy), as evaluate writes RUN/eval-S; else ./explanations")  # fmt: skip
    p.add_argument("--batch-size", type=int, default=16, help="images explained at a time")
    _cache_dir(p)
    _device(p)
    _no_progress(p)

    p = sub.add_parser("demo", help="train, evaluate and report on the sample bundled with eyescreen")
    p.add_argument("--out", default="runs/demo", help="run directory (default: runs/demo)")
    p.add_argument("--epochs", type=int, help="override the quick preset's epochs")
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
    p.add_argument("--epochs", type=int, default=20, help="(default: 20)")
    p.add_argument("--batch-size", type=int, default=64, help="pairs of views per step (default: 64)")
    p.add_argument("--lr", type=float, default=1e-3, help="peak learning rate (default: 1e-3)")
    p.add_argument("--temperature", type=float, default=0.2, help="of the NT-Xent loss")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    p.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp32"],
                   help="auto: bf16 where the hardware supports it, else fp32")  # fmt: skip
    _device(p)
    p.add_argument("--holdout-split", default="",
                   help="split file of the fine-tuning run (train's split.csv): its validation and test "
                        "patients' photographs are left out, so they stay unseen")  # fmt: skip
    p.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")
    _cache_dir(p)
    _no_progress(p)

    p = sub.add_parser("serve", help="web page and JSON API for screening, with Grad-CAM overlays")
    p.add_argument("--checkpoint", help="model to serve (default: the demo model, trained first if needed)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: all interfaces)")
    p.add_argument("--port", type=int, default=8000, help="(default: 8000)")
    p.add_argument("--workers", type=int, default=2, help="requests computed at once (one model copy each)")
    p.add_argument("--max-upload-mb", type=float, default=20.0, help="largest accepted image file")
    _device(p)

    sub.add_parser("models", help="list the available models")
    sub.add_parser("presets", help="show the training presets")
    return parser


def run(args) -> int:
    if args.command == "train":
        from .train import train

        args.data = args.data or _resumed_data(args)
        name = args.preset
        if name is None and not args.resume:  # a resumed run keeps the settings it started with
            name, why = default_preset(args.data, args.model, args.device or "auto")
            print(f"preset: {name} (the default here: {why})")
        cfg = None if args.resume else preset(name, **_overrides(args))
        train(
            cfg,
            args.data,
            args.out,
            classes=parse_classes(args.classes),
            split_file=args.split,
            resume=args.resume,
            cache_dir=args.cache_dir,
            progress=not args.no_progress,
            argv=sys.argv,
            save_every=args.save_every,
        )
    elif args.command == "evaluate":
        from .evaluate import evaluate

        report = evaluate(
            args.checkpoint,
            args.out,
            data=args.data,
            split_file=args.split,
            split_name=args.subset,
            cache_dir=args.cache_dir,
            n_resamples=args.bootstrap,
            device=args.device,
            tta=args.tta,
            progress=not args.no_progress,
        )
        m, ci = report["metrics"], report["confidence_intervals"]
        for key in ("accuracy", "balanced_accuracy", "macro_auc"):
            lo, hi = ci[key]
            interval = f" (95% CI {lo:.3f}-{hi:.3f})" if lo is not None else ""
            print(f"{key:>18}: {m[key]:.4f}{interval}")
        if "decision" in report and report["decision"]["prior_power"]:  # what predict and serve name
            d = report["decision"]
            lo, hi = d["confidence_intervals"]["balanced_accuracy"]
            print(f"with the decision rule (prior^-{d['prior_power']:g}, the class predict names): balanced_accuracy "
                  f"{d['metrics']['balanced_accuracy']:.4f} (95% CI {lo:.3f}-{hi:.3f}), accuracy "
                  f"{d['metrics']['accuracy']:.4f}")  # fmt: skip
        if "with_fellow_eye" in report:
            f = report["with_fellow_eye"]
            lo, hi = f["confidence_intervals"]["macro_auc"]
            print(f"with the fellow eye (weight {f['weight']:.2f}, {f['eyes_with_fellow']} eyes): "
                  f"macro_auc {f['metrics']['macro_auc']:.4f} (95% CI {lo:.3f}-{hi:.3f})")  # fmt: skip
        absent = [c for c, v in report["metrics"]["per_class"].items() if v["support"] == 0]
        if absent:
            print(f"note: no {', '.join(absent)} in these data: the metrics are over the classes present")
        print(f"report: {report['files']['html']}")
    elif args.command == "calibrate":
        from .evaluate import calibrate_from_split

        calibrate_from_split(args.checkpoint, args.normal_class, args.cache_dir, args.device)
    elif args.command == "predict":
        return _predict(args)
    elif args.command == "explain":
        from .explain_cli import run_explain

        if args.evaluate and args.anatomy:
            raise ValueError("give --evaluate or --anatomy, not both (--evaluate includes the anatomy table)")
        args.out = args.out or _explain_out(args)
        if args.evaluate:
            from .explain_cli import run_faithfulness

            print(run_faithfulness(args))
        elif args.anatomy:
            from .explain_cli import run_anatomy

            print(run_anatomy(args))
        else:
            result = run_explain(args)
            print(f"{result['explained']} explained, {len(result['failed'])} unreadable -> {result['index']}")
    elif args.command == "demo":
        from .demo import run_demo

        run_demo(
            args.out,
            cache_dir=args.cache_dir,
            progress=not args.no_progress,
            epochs=args.epochs,
            model=args.model,
        )
    elif args.command == "export":
        from .export import export_onnx

        out = args.out or Path(args.checkpoint).with_suffix(".onnx")
        print(f"exported {export_onnx(args.checkpoint, out)}")
    elif args.command == "check-data":
        import json

        from .check import check_data, format_report, problems

        data = _one_data(args.data, args.data_option)
        rep = check_data(data, parse_classes(args.classes), args.split, progress=not args.no_progress)
        print(format_report(rep))
        if args.json:
            Path(args.json).write_text(json.dumps(rep, indent=2))
        return 1 if problems(rep) else 0
    elif args.command == "pretrain":
        from .pretrain import PretrainConfig, pretrain

        cfg = PretrainConfig(
            model=args.model, image_size=args.image_size, enhance=args.enhance, epochs=args.epochs,
            batch_size=args.batch_size, lr=args.lr, temperature=args.temperature, seed=args.seed,
            precision=args.precision, device=args.device, holdout_split=args.holdout_split,
        )  # fmt: skip
        sources = args.data + args.data_option
        if not sources:
            raise ValueError("give the photographs: manifests and/or folders, as arguments or with --data")
        path = pretrain(cfg, sources, args.out, resume=args.resume, cache_dir=args.cache_dir,
                        progress=not args.no_progress)  # fmt: skip
        print(f"pre-trained weights: {path}\nfine-tune with: eyescreen train ... --init {path}")
    elif args.command == "serve":
        from .server import serve

        serve(args.checkpoint, args.host, args.port, args.workers, args.max_upload_mb, args.device)
    elif args.command == "models":
        width = max(map(len, list_models()))
        print("\n".join(f"{name:<{width}}  {describe_model(name)}" for name in list_models()))
    elif args.command == "presets":
        for name in PRESETS:
            role = {
                DEFAULT_PRESET: " (default on a CPU)",
                GPU_PRESET: " (default on a GPU)",
                FALLBACK_PRESET: " (default without a diagnoses column)",
            }
            role |= {
                n: f" (second stage: --init RUN/best.safetensors of a {DEFAULT_PRESET} run)"
                for n in FINETUNE_PRESETS
            }
            changes = " ".join(f"--{k.replace('_', '-')} {v}" for k, v in preset_changes(name).items())
            print(
                f"{name}{role.get(name, '')}\n    {PRESET_PURPOSES[name]}\n    = {changes or 'the defaults'}"
            )
        print("every setting and its default: eyescreen train --help")
    return 0


def _resumed_data(args) -> str:
    """The data a run being resumed started on (its last checkpoint records it); else --data is needed."""
    if not args.resume:
        raise ValueError("give the data to train on: --data MANIFEST_OR_FOLDER")
    from .checkpoint import read_meta

    last = Path(args.out) / "last.safetensors"
    if not last.is_file():
        raise ValueError(f"{args.out}: no finished epoch to resume from (no last.safetensors); give --data")
    return read_meta(last)["data"]


def _explain_out(args) -> str:
    """Where `explain` writes when --out is not given: a split's explanations live beside its checkpoint."""
    if not args.subset:
        return "explanations"
    kind = "faithfulness" if args.evaluate else "anatomy" if args.anatomy else "explain"
    return str(Path(args.checkpoint).parent / f"{kind}-{args.subset}")


def _one_data(positional: str | None, option: str | None) -> str:
    """A manifest or folder given either way (`check-data DATA` or `check-data --data DATA`), once."""
    if positional and option and positional != option:
        raise ValueError(f"two data sources given ({positional} and --data {option}): give one")
    if not (positional or option):
        raise ValueError("give the data: a manifest CSV or a root/<class>/ folder, as an argument or --data")
    return positional or option


def _predict(args) -> int:
    from .data import images_given

    # The files found, handed on as files: the folders are walked once.
    images = images_given(args.inputs, say=partial(print, file=sys.stderr))
    if args.pairs:
        from .pairs import DEFAULT_PATTERN
        from .predict_pairs import predict_pairs

        result = predict_pairs(images, args.checkpoint, args.out, pattern=args.pair_pattern or DEFAULT_PATTERN,
                               device=args.device, progress=not args.no_progress, resume=args.resume)  # fmt: skip
        kept = f" ({result['resumed']} kept from the earlier run)" if result["resumed"] else ""
        print(f"{result['patients']} patients predicted{kept}, {len(result['unpaired'])} unpaired files, "
              f"{len(result['failed'])} unreadable -> {result['csv']}")  # fmt: skip
        _print_preview(result["csv"], ["patient", "predicted", "prob_*", "driven_by", "referable", "error"])
        print("\n".join(result["legend"]))
        return 0 if result["patients"] or result["resumed"] else 1
    from .predict import predict

    result = predict(
        images,
        args.checkpoint,
        args.out,
        batch_size=args.batch_size,
        device=args.device,
        progress=not args.no_progress,
        resume=args.resume,
    )
    kept = f" ({result['resumed']} kept from the earlier run)" if result["resumed"] else ""
    print(f"{result['predicted']} predicted{kept}, {len(result['failed'])} unreadable -> {result['csv']}")
    _print_preview(result["csv"], ["file", "predicted", "prob_*", "referable", "error"])
    print("\n".join(result["legend"]))
    return 0 if result["predicted"] or result["resumed"] or not result["failed"] else 1


def _short(cell: str) -> str:
    """Probabilities to three places on the console (the CSV keeps six)."""
    try:
        return f"{float(cell):.3f}" if "." in cell else cell
    except ValueError:
        return cell


def _print_preview(csv_path: Path, columns: list[str], most: int = 20) -> None:
    """A few rows on the console, so that predicting a handful of files needs no spreadsheet; "prob_*" is
    every class's probability column."""
    import csv

    with open(csv_path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows or len(rows) > most:
        return
    shown = [
        name for c in columns for name in rows[0] if name == c or (c == "prob_*" and name.startswith("prob_"))
    ]
    table = [shown] + [[_short(row[c]) for c in shown] for row in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(shown))]
    for line in table:
        print("  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip())


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except (DataError, ImageError, CheckpointError, FileExistsError, ValueError) as e:
        print(f"eyescreen {args.command}: error: {e}", file=sys.stderr)
        return 2
    except StopRequested as e:
        print(f"eyescreen {args.command}: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print(
            "interrupted; continue with the same command and --resume (train, predict, explain)",
            file=sys.stderr,
        )
        return 130
