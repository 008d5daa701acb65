"""`eyescreen info`: what a checkpoint is, what it learnt from, and what its stored numbers say — read
from its own metadata, without building the model. For whoever receives a model file and must decide
whether to trust it on their photographs."""

from __future__ import annotations

import dataclasses
import json
import shlex
from pathlib import Path

from .calibrate import temperature_note
from .checkpoint import file_sha256, read_meta
from .config import PRESETS, preset_settings
from .data import SPLITS, manifest_fingerprint
from .ensemble import members_name
from .held_out_links import seen_elsewhere
from .models import takes_both_eyes

# How a run executed, not what it learnt: left out when finding the closest preset.
RUNTIME = {"device", "precision", "channels_last", "compile"}
METRIC_NAMES = {"accuracy": "accuracy", "balanced_accuracy": "balanced accuracy", "macro_auc": "macro-AUC"}
FEW_VALIDATION_IMAGES = 100  # under this, the stored validation numbers and fits are rough


def closest_preset(config: dict) -> tuple[str, dict]:
    """The preset whose settings differ from `config` in the fewest, and those differences."""

    def differences(name: str) -> dict:
        settings = dataclasses.asdict(preset_settings(name))
        return {k: v for k, v in config.items() if k in settings and k not in RUNTIME and settings[k] != v}

    name = min(PRESETS, key=lambda n: len(differences(n)))
    return name, differences(name)


NOT_HERE = "not found on this machine"


def data_status(data: str | None, trained_sha256: str | None) -> str:
    """Whether the training data is still where the checkpoint says, and unchanged."""
    if not data:
        return "not recorded"
    path = Path(data)
    if not path.exists():
        return NOT_HERE
    if trained_sha256 is None:
        return "a folder of class folders, not fingerprinted"
    return "the same file" if manifest_fingerprint(path) == trained_sha256 else "changed since training"


def describe_checkpoint(path: str | Path, fingerprints: bool = True) -> dict:
    """The card's facts. Without `fingerprints`, the checkpoint and its training data are not hashed
    (sha256 and data_here are None): what `card_lines(..., paths=False)` shows does not use them."""
    path = Path(path)
    meta = read_meta(path)
    if meta.get("kind") == "pretrained":
        return _pretrained_card(path, meta, fingerprints)
    members = meta.get("ensemble")
    config = {} if members else meta.get("config", {})  # an ensemble's recipes are its members'
    split = meta.get("split", {})
    card = {
        "checkpoint": str(path),
        "sha256": file_sha256(path) if fingerprints else None,
        "bytes": path.stat().st_size,
        "model": meta["model"]["name"],
        "both_eye_model": takes_both_eyes(meta["model"]),
        "classes": meta["classes"],
        "preprocessing": meta["preprocessing"],
        "recipe": _recipe(config),
        "epochs": config.get("epochs"),
        "selected_epoch": meta.get("epoch"),
        "select_metric": config.get("select_metric"),
        "data": meta.get("data"),
        "data_sha256": meta.get("data_sha256"),
        "data_here": data_status(meta.get("data"), meta.get("data_sha256")) if fingerprints else None,
        "split_images": {s: sum(1 for v in split.values() if v == s) for s in SPLITS},
        "linked": _linked(split, meta.get("linked_photographs")),
        "validation": meta.get("val_metrics", {}),
        "calibration": meta.get("calibration", {}),
        "run": run_record(path.parent / "run_info.json"),
    }
    if members:
        card["members"] = [_member(m) for m in members]
    return card


def _linked(split: dict, links: list[list[str]] | None) -> dict | None:
    """The sets of photographs of one eye (or one file) under several patient ids that the run found, and
    the held-out eyes among them with a twin in another split; None: not recorded (an older checkpoint)."""
    if links is None:
        return None
    apart = {part: len(seen_elsewhere(list(split), split, links, part)) for part in ("val", "test")}
    return {"sets": len(links), "held_out_with_twin_elsewhere": apart}


def _pretrained_card(path: Path, meta: dict, fingerprints: bool) -> dict:
    """The facts of a backbone from `eyescreen pretrain`: no classes, no validation, a loss."""
    return {
        "checkpoint": str(path),
        "sha256": file_sha256(path) if fingerprints else None,
        "bytes": path.stat().st_size,
        "kind": "pretrained",
        "model": meta["model"]["name"],
        "preprocessing": meta["preprocessing"],
        "pretrain": meta.get("pretrain", {}),
        "epoch": meta.get("epoch"),
        "loss": meta.get("loss"),
    }


def _pretrained_lines(card: dict, paths: bool) -> list[str]:
    settings, prep = card["pretrain"], card["preprocessing"]
    where = card["checkpoint"] if paths else "PRETRAINED"
    return [
        f"model: {card['model']} backbone, pre-trained by `eyescreen pretrain` ({settings.get('method', '?')}, "
        "self-supervised): not a classifier, it has no classes",
        f"input: {prep['image_size']} px, enhancement {prep.get('enhance', 'none')}",
        f"pre-training: epoch {card['epoch']} of {settings.get('epochs', '?')}, contrastive loss "
        + (f"{card['loss']:.4f}" if card["loss"] is not None else "?")
        + f", on {settings.get('images', '?')} photographs"
        + (
            f", those of {settings['holdout_patients']} held-out patients left out"
            + (
                f" with {n} photographs of their eyes under other ids"
                if (n := settings.get("holdout_linked"))
                else ""
            )
            if settings.get("holdout_patients")
            else ""
        ),
        *([_budget_text(budget)] if (budget := settings.get("budget")) else []),
        f"next: eyescreen train --data DATA --init {where}   (fine-tunes it into a classifier)",
    ]


def _budget_text(budget: dict) -> str:
    """Why a run has fewer epochs than were asked: `--time-budget` chose them after the first (and fewer
    again where the machine slowed)."""
    slowed = "".join(f"; fewer after epoch {r['after_epoch']}, at {r['seconds_an_epoch']:.0f} s an epoch"
                     for r in budget.get("revisions", []))  # fmt: skip
    return (f"time budget: {budget['minutes']:g} min, in which {budget['epochs']} of the {budget['epochs_asked']} "
            f"epochs asked fit (the first took {budget['first_epoch_seconds']:.0f} s{slowed})")  # fmt: skip


def _recipe(config: dict) -> dict:
    name, changes = closest_preset(config) if config else (None, {})
    return {"closest_preset": name, "differs_in": changes}


def _recipe_text(recipe: dict) -> str:
    changes = ", ".join(f"{k}={v!r}" for k, v in recipe["differs_in"].items()) or "no changes"
    return f"preset {recipe['closest_preset']} with {changes}"


def _member(member: dict) -> dict:
    return {
        "checkpoint": member["checkpoint"],
        "sha256": member["sha256"],
        "model": member["model"],
        "recipe": _recipe(member["config"]),
        "epochs": member["config"].get("epochs"),
        "selected_epoch": member["epoch"],
        "validation": member["val_metrics"],
    }


def run_record(path: Path) -> dict | None:
    """What `train` recorded of the run beside the checkpoint (version, commit, device, command), if the
    checkpoint still sits in its run directory."""
    try:
        info = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    keys = ("eyescreen", "git_commit", "device", "precision", "processes", "started", "command",
            "time_budget")  # fmt: skip
    return {k: info[k] for k in keys if k in info}


def card_lines(card: dict, paths: bool = True) -> list[str]:
    """The card for a person: a line per question. Without `paths`, none of the lines that name files
    on this machine (for the web page, whose readers are not its operators)."""
    prep = card["preprocessing"]
    lines = []
    if paths:
        lines.append(
            f"checkpoint: {card['checkpoint']} ({_size(card['bytes'])}, sha256 {card['sha256'][:16]}…)"
        )
    if card.get("kind") == "pretrained":
        return lines + _pretrained_lines(card, paths)
    members = card.get("members", [])
    model = card["model"]
    if members:
        model = members_name([m["model"] for m in members]) + ", class scores averaged"
    lines += [
        f"model: {model} ({'both eyes per patient' if card['both_eye_model'] else 'one eye at a time'}), "
        f"{len(card['classes'])} classes: {', '.join(card['classes'])}",
        f"input: {prep['image_size']} px, enhancement {prep.get('enhance', 'none')}",
    ]
    recipe = card["recipe"]
    if recipe["closest_preset"]:
        lines.append(f"recipe: {_recipe_text(recipe)}")
        metric = METRIC_NAMES.get(card["select_metric"], card["select_metric"])
        lines.append(f"selected: epoch {card['selected_epoch']} of {card['epochs']}, by validation {metric}")
        if budget := (card.get("run") or {}).get("time_budget"):
            lines.append(_budget_text(budget))
    lines += _member_lines(members, paths)
    if run := card.get("run"):
        lines += _provenance_lines(run, bool(members), paths)
    if paths:
        lines.append(f"trained on: {card['data']} ({card['data_here']})")
        if card["data_here"] == NOT_HERE:
            lines.append("  moved? evaluate, calibrate and explain --subset take --data for its new place")
    sizes = card["split_images"]
    lines += _split_lines(sizes, card.get("linked"))
    if metrics := card["validation"]:
        level = "per patient" if card["both_eye_model"] else "per eye"
        lines.append(
            f"validation {'of the ensemble' if members else 'at that epoch'} ({level}): "
            + ", ".join(
                f"{METRIC_NAMES.get(k, k)} {v:.3f}" for k, v in metrics.items() if isinstance(v, float)
            )
        )
    if 0 < sizes["val"] < FEW_VALIDATION_IMAGES:
        lines.append(
            f"caution: {sizes['val']} validation images; the numbers above and the fits below are rough"
        )
    lines += _calibration_lines(card["calibration"])
    if paths:
        lines.append(
            "test split: not stored in the checkpoint; `eyescreen evaluate --checkpoint "
            f"{card['checkpoint']} --subset test` scores it (and --data scores other patients)"
        )
    return lines


def _member_lines(members: list[dict], paths: bool) -> list[str]:
    """An ensemble's members, a line each: where (with `paths`), recipe, epoch, validation alone."""
    lines = []
    for i, member in enumerate(members, 1):
        where = f"{member['checkpoint']} (sha256 {member['sha256'][:16]}…): " if paths else ""
        auc = member["validation"].get("macro_auc")
        lines.append(
            f"member {i}: {where}{_recipe_text(member['recipe'])}; epoch "
            f"{member['selected_epoch']} of {member['epochs']}"
            + (f", validation macro-AUC {auc:.3f} alone" if auc is not None else "")
        )
    return lines


def _provenance_lines(run: dict, ensemble: bool, paths: bool) -> list[str]:
    """What made the checkpoint: version, commit, device, start; with `paths`, the command line."""
    lines = [
        f"{'made' if ensemble else 'trained'} with: eyescreen {run.get('eyescreen', '?')} (commit "
        f"{run.get('git_commit') or 'unknown'}) on {run.get('device', '?')}"
        + (f", {run['precision']}" if "precision" in run else "")
        + f", started {run.get('started', '?')}"
    ]
    command = run.get("command") or []
    # The command line; else a program that called train() or write_ensemble().
    if paths and command[1:2] in (["train"], ["ensemble"]):
        lines.append("command: eyescreen " + shlex.join(command[1:]))
    elif paths and command:
        lines.append("started by: " + shlex.join(command))
    return lines


def _split_lines(sizes: dict, linked: dict | None) -> list[str]:
    """The split's size, and the photographs of one eye under several patient ids it holds."""
    lines = ["split (images): " + ", ".join(f"{sizes[s]} {s}" for s in SPLITS) + " — by patient"]
    if linked:
        apart = linked["held_out_with_twin_elsewhere"]
        if any(apart.values()):
            lines.append(f"  caution: {apart['val']} validation and {apart['test']} test images are photographs of "
                         "eyes in another split under other patient ids (`evaluate` names them and scores without them)")  # fmt: skip
        elif linked["sets"]:
            lines.append(
                f"  {linked['sets']} set(s) of photographs of one eye under several patient ids, each within one split"
            )
    return lines


def _size(n: int) -> str:
    return f"{n / 2**20:.1f} MB" if n >= 2**20 else f"{n / 2**10:.0f} kB"


def _calibration_lines(calibration: dict) -> list[str]:
    if "temperature" not in calibration:
        return ["calibration: none stored (probabilities as the network gives them; argmax decisions)"]
    lines = [f"calibration: temperature {calibration['temperature']:.3f}, fitted on validation"]
    if note := temperature_note(calibration["temperature"]):
        lines.append(f"  ({note})")
    if (decision := calibration.get("decision")) and not decision["prior_power"]:
        lines.append("decision rule: arg-max (no prior correction helped on validation)")
    elif decision:
        lines.append(
            f"decision rule: P(class) x prior^-{decision['prior_power']:g} (validation balanced accuracy "
            f"{decision['val_balanced_accuracy_argmax']:.3f} with arg-max, {decision['val_balanced_accuracy']:.3f} "
            "with the rule)"
        )
    if referable := calibration.get("referable"):
        where = ""
        if "sensitivity" in referable:
            where = (f" (validation: sensitivity {referable['sensitivity']:.2f} at specificity "
                     f"{referable['specificity']:.2f})")  # fmt: skip
        lines.append(f"referable: 1 - P({referable['normal_class']}) > {referable['threshold']:.3f}{where}")
    if fellow := calibration.get("fellow_eye"):
        gain = ""
        if "val_macro_auc_alone" in fellow:
            gain = (f" (validation macro-AUC {fellow['val_macro_auc_alone']:.3f} alone, "
                    f"{fellow['val_macro_auc']:.3f} with it)")  # fmt: skip
        lines.append(
            f"fellow eye (when both eyes are given, as with `predict --pairs`): weight {fellow['weight']:.2f}{gain}"
        )
    if eye := calibration.get("eye"):  # a both-eye model: the lines above are its patients'
        lines += [f"each eye's {line}" for line in _calibration_lines(eye)]
    return lines
