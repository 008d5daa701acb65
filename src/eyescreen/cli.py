"""The `eyescreen` command: every subcommand is a thin call into the modules of the package."""

from __future__ import annotations

import os
import sys
from functools import partial
from pathlib import Path

from .checkpoint import CheckpointError
from .cli_args import as_flag, build_parser, config_overrides
from .config import (
    DEFAULT_PRESET,
    FALLBACK_PRESET,
    FINETUNE_PRESETS,
    GPU_FALLBACK_PRESET,
    GPU_PRESET,
    PRESET_PURPOSES,
    PRESETS,
    default_preset,
    preset,
    preset_changes,
)
from .data import DataError, parse_classes
from .models import describe_model, list_models
from .preprocess import ImageError
from .stopping import StopRequested


def _interval(bounds) -> str:
    """A 95% interval for the console; none where too few resamples could be scored (a tiny split)."""
    lo, hi = bounds
    return f" (95% CI {lo:.3f}-{hi:.3f})" if lo is not None and hi is not None else ""


def run(args) -> int:
    """Run the subcommand `args` name; its exit status (0 unless it says otherwise)."""
    return COMMANDS[args.command](args) or 0


def _train(args) -> int | None:
    from .train import train

    args.data = args.data or _resumed_data(args)
    name = args.preset
    if name is None and not args.resume:  # a resumed run keeps the settings it started with
        name, why = default_preset(args.data, args.model, args.device or "auto")
        print(f"preset: {name} (the default here: {why})")
    cfg = None if args.resume else preset(name, **config_overrides(args))
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


def _evaluate(args) -> int | None:
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
        by=args.by,
    )
    m, ci = report["metrics"], report["confidence_intervals"]
    print(f"{report['split']} split, {m['n']} {report['level']}s; classes as the most probable one:")
    for key in ("accuracy", "balanced_accuracy", "macro_auc"):
        print(f"{key:>18}: {m[key]:.4f}{_interval(ci[key])}")
    if "decision" in report and report["decision"]["prior_power"]:  # what predict and serve name
        d = report["decision"]
        print(f"with the decision rule (prior^-{d['prior_power']:g}, the class predict names): balanced_accuracy "
              f"{d['metrics']['balanced_accuracy']:.4f}{_interval(d['confidence_intervals']['balanced_accuracy'])}, "
              f"accuracy {d['metrics']['accuracy']:.4f}")  # fmt: skip
    if "with_fellow_eye" in report:
        f = report["with_fellow_eye"]
        print(f"with the fellow eye (weight {f['weight']:.2f}, {f['eyes_with_fellow']} eyes): "
              f"macro_auc {f['metrics']['macro_auc']:.4f}{_interval(f['confidence_intervals']['macro_auc'])}")  # fmt: skip
    if "linked_elsewhere" in report:
        w = report["linked_elsewhere"]
        print(f"note: {len(w['eyes'])} eye(s) here are photographs of eyes in another split under other patient "
              f"ids (the report names them); without them: macro_auc {w['without_them']['macro_auc']:.4f}, "
              f"balanced_accuracy {w['without_them']['balanced_accuracy']:.4f} ({w['without_them']['n']} eyes)")  # fmt: skip
    if report.get("left_out_classes"):
        from .evaluate import left_out_note

        print(f"note: {left_out_note(report['left_out_classes'])}")
    if report["absent_classes"]:
        print(f"note: no {', '.join(report['absent_classes'])} in these data: the metrics are over the "
              "classes present")  # fmt: skip
    if "subgroups" in report:
        from .subgroups import subgroup_table

        groups = report["subgroups"]
        unit = groups.get("unit", "eyes")
        print(f"\nper subgroup of {groups['column']!r} ({unit} of the {report['split']} split):")
        print("\n".join(subgroup_table(groups["rows"], groups["column"], report["classes"], unit)))
        print(f"subgroups: {groups['files']['md']}")
    print(f"report: {report['files']['html']}")


def _calibrate(args) -> int | None:
    from .calibrate_checkpoint import calibrate_from_split

    calibrate_from_split(
        args.checkpoint, args.normal_class, args.cache_dir, args.device, not args.no_progress, args.data
    )


def _explain(args) -> int | None:
    from .explain_cli import run_explain

    if args.evaluate and args.anatomy:
        raise ValueError("give --evaluate or --anatomy, not both (--evaluate includes the anatomy table)")
    if args.data and not args.subset:
        raise ValueError("--data goes with --subset: it places the checkpoint's data; photographs to "
                         "explain are given as arguments")  # fmt: skip
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


def _demo(args) -> int | None:
    from .demo import run_demo

    run_demo(
        args.out,
        cache_dir=args.cache_dir,
        progress=not args.no_progress,
        epochs=args.epochs,
        model=args.model,
    )


def _export(args) -> int | None:
    from .export import export_onnx

    out = args.out or Path(args.checkpoint).with_suffix(".onnx")
    print(f"exported {export_onnx(args.checkpoint, out)}")


def _check_data(args) -> int | None:
    import json

    from .check import check_data, format_report, problems

    data = _one_data(args.data, args.data_option)
    rep = check_data(data, parse_classes(args.classes), args.split, progress=not args.no_progress)
    print(format_report(rep))
    if args.json:
        Path(args.json).write_text(json.dumps(rep, indent=2))
    return 1 if problems(rep) else 0


def _pretrain(args) -> int | None:
    from .pretrain import PretrainConfig, pretrain

    cfg = PretrainConfig(
        model=args.model, image_size=args.image_size, enhance=args.enhance, epochs=args.epochs,
        batch_size=args.batch_size, lr=args.lr, temperature=args.temperature, seed=args.seed,
        precision=args.precision, device=args.device, holdout_split=args.holdout_split,
        time_budget=args.time_budget,
    )  # fmt: skip
    sources = args.data + args.data_option
    if not sources:
        raise ValueError("give the photographs: manifests and/or folders, as arguments or with --data")
    path = pretrain(cfg, sources, args.out, resume=args.resume, cache_dir=args.cache_dir,
                    progress=not args.no_progress)  # fmt: skip
    print(f"pre-trained weights: {path}\nfine-tune with: eyescreen train ... --init {path}")


def _serve(args) -> int | None:
    from .server import serve

    serve(args.checkpoint, args.host, args.port, args.workers, args.max_upload_mb, args.device)


def _compare(args) -> int | None:
    from .compare import compare, comparison_lines, write_comparison

    result = compare(args.a, args.b, args.bootstrap)
    print("\n".join(comparison_lines(result)))
    if args.json:
        write_comparison(result, args.json)


def _ensemble(args) -> int | None:
    from .ensemble import write_ensemble

    path = write_ensemble(args.checkpoints, args.out, sys.argv)
    print(f"ensemble of {len(args.checkpoints)} models: {path}")
    if not args.no_calibrate:
        from .calibrate_checkpoint import calibrate_from_split

        try:
            calibrate_from_split(
                path, args.normal_class, args.cache_dir, args.device, not args.no_progress, args.data
            )
        except DataError as e:  # the members' training data moved: the ensemble itself is fine
            raise DataError(f"{e}\nthe ensemble is saved, uncalibrated: {path}; then: "
                            f"`eyescreen calibrate --checkpoint {path} --data DATA`") from None  # fmt: skip
    print(f"next: eyescreen evaluate --checkpoint {path}   (eyescreen info {path} says what it is)")


def _info(args) -> int | None:
    import json

    from .model_card import card_lines, describe_checkpoint

    card = describe_checkpoint(args.checkpoint)
    print(json.dumps(card, indent=2) if args.json else "\n".join(card_lines(card)))


def _models(args) -> int | None:
    width = max(map(len, list_models()))
    print("\n".join(f"{name:<{width}}  {describe_model(name)}" for name in list_models()))


def _presets(args) -> int | None:
    for name in PRESETS:
        role = {
            DEFAULT_PRESET: " (default on a CPU)",
            GPU_PRESET: " (default on a GPU)",
            FALLBACK_PRESET: " (default on a CPU without a diagnoses column, or for a both-eye model)",
            GPU_FALLBACK_PRESET: " (default on a GPU without a diagnoses column)",
        }
        role |= {
            n: f" (second stage: --init RUN/best.safetensors of a {DEFAULT_PRESET} run)"
            for n in FINETUNE_PRESETS
        }
        changes = " ".join(as_flag(k, v) for k, v in preset_changes(name).items())
        print(f"{name}{role.get(name, '')}\n    {PRESET_PURPOSES[name]}\n    = {changes or 'the defaults'}")
    print("every setting and its default: eyescreen train --help")


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
        if result["several"]:
            print(f"{result['several']} patient(s) with several photographs of an eye: each screened on every "
                  "right-left combination, decided by the one with the higher disease score (its photographs "
                  "in right_file and left_file, the others in other_files)")  # fmt: skip
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
    if result["fellow_weight"]:
        from .pairs import pair_files

        both = sum(1 for pair in pair_files(images)[0] if pair.right and pair.left)
        if both:
            print(f"{both} patient(s) have both eyes here: `predict --pairs` blends each eye with its fellow "
                  f"(weight {result['fellow_weight']:.2f} for this checkpoint, fitted on validation)")  # fmt: skip
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
    from itertools import islice

    with open(csv_path, newline="") as f:
        rows = list(islice(csv.DictReader(f), most + 1))  # enough to know it is too long to show
    if not rows or len(rows) > most:
        return
    shown = [
        name for c in columns for name in rows[0] if name == c or (c == "prob_*" and name.startswith("prob_"))
    ]
    table = [shown] + [[_short(row[c]) for c in shown] for row in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(shown))]
    for line in table:
        print("  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip())


# each subcommand and the function that runs it
COMMANDS = {
    "train": _train,
    "evaluate": _evaluate,
    "calibrate": _calibrate,
    "predict": _predict,
    "explain": _explain,
    "demo": _demo,
    "export": _export,
    "check-data": _check_data,
    "pretrain": _pretrain,
    "serve": _serve,
    "compare": _compare,
    "ensemble": _ensemble,
    "info": _info,
    "models": _models,
    "presets": _presets,
}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if hasattr(args, "no_progress") and not sys.stderr.isatty():
        args.no_progress = True  # a log file or a pipe: a bar's carriage returns make one long line of it
    try:
        code = run(args)
        sys.stdout.flush()  # a reader gone away shows here, in the handler below, not at exit
        return code
    except BrokenPipeError:
        # `eyescreen check-data DATA | head`: stop quietly, as other command-line tools do (files written
        # are whole); nothing more is printed to the closed pipe, not even at exit
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # 128 + SIGPIPE, what a shell reports for such a command
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
