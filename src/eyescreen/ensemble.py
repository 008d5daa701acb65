"""Several trained models as one: their class scores averaged, saved as one checkpoint.

Runs of one recipe with other seeds (or near variants of it) make different mistakes; averaging their
predictions ranks eyes better than any one of them (benchmarks/RESULTS.md, "More seeds of the GPU
default"). The ensemble is an ordinary checkpoint: `predict`, `evaluate`, `explain` (the members' maps
averaged), `serve` and `export` take it as they take one model, and `calibrate` fits its own temperature,
decision rule, screening threshold and fellow-eye weight on validation. Both-eye models make an
ensemble too, of both-eye models only: their patient and per-eye scores are averaged apart, and every
command treats it as a both-eye model (`models.takes_both_eyes`).

The members must agree on what a checkpoint promises its users — classes, preprocessing, normalisation —
and on the split: a member trained on another split would have seen the validation and test patients of
the others, and the ensemble's numbers on them would be inflated.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from .checkpoint import BEST, CheckpointError, file_sha256, load_model, save_model
from .models import create_model, is_binocular

MODEL_NAME = "ensemble"
# What every member must share with the first, and why it matters to a user of the checkpoint.
MUST_AGREE = {
    "classes": "classes (names and order)",
    "preprocessing": "preprocessing (image size, enhancement)",
    "normalization": "normalisation",
    "split": "train/val/test split (else one member's training patients are another's test patients)",
}
BOTH_EYE_LABELS = ("normal_class", "two_diseases")  # both-eye members: how a patient's label is made


class Ensemble(nn.Module):
    """The members' logits averaged: softmax of the mean is the members' probabilities' geometric mean,
    renormalised (on ODIR-5K's validation eyes it ranks as the arithmetic mean does, to ±0.001 macro-AUC;
    RESULTS.md). Its Grad-CAM is the average of the members' own maps (`explain.compute_cams`, and
    `compute_pair_cams` for both-eye members)."""

    def __init__(self, num_classes: int, members: list[dict]):
        super().__init__()
        self.members = nn.ModuleList(
            create_model(m["name"], **{**m["args"], "num_classes": num_classes}) for m in members
        )

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        outputs = [member(*inputs) for member in self.members]
        if isinstance(outputs[0], tuple):  # both-eye members: (per-eye logits, patient logits)
            return tuple(_mean([out[i] for out in outputs]) for i in range(len(outputs[0])))
        return _mean(outputs)

    def eye_weights(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Both-eye members: each eye's weight in the patient decision, averaged over the members."""
        return _mean([member.eye_weights(x, mask) for member in self.members])


def _mean(tensors: list[torch.Tensor]) -> torch.Tensor:
    return torch.stack([t.float() for t in tensors]).mean(0)


def build_ensemble(checkpoints: list[str | Path]) -> tuple[Ensemble, dict]:
    """The ensemble of these checkpoints and its metadata (the first member's, less what belonged to
    that one model: its epoch, validation numbers and calibration)."""
    if len(checkpoints) < 2:
        raise ValueError("an ensemble needs at least two checkpoints")
    loaded = [(Path(p), *load_model(p)) for p in checkpoints]
    first_path, _, first = loaded[0]
    for path, _, meta in loaded:
        if meta["model"]["name"] == MODEL_NAME:
            raise CheckpointError(f"{path}: an ensemble already; give its members instead")
        problem = _disagreement(meta, first, first_path)
        if problem:
            raise CheckpointError(f"{path}: {problem}")
    classes = first["classes"]
    specs = [{"name": meta["model"]["name"], "args": meta["model"]["args"]} for _, _, meta in loaded]
    model = Ensemble(len(classes), specs)
    for member, (_, net, _) in zip(model.members, loaded, strict=True):
        member.load_state_dict(net.state_dict())
    model.model_name = MODEL_NAME
    spec = {"name": MODEL_NAME, "args": {"num_classes": len(classes), "members": specs}}
    dropped = ("model", "epoch", "val_metrics", "calibration")
    meta = {k: v for k, v in first.items() if k not in dropped} | {
        "model": spec,
        "ensemble": [_member_record(path, meta) for path, _, meta in loaded],
    }
    return model.eval(), meta


def _disagreement(meta: dict, first: dict, first_path: Path) -> str | None:
    """What this member does not share with the first that it must, or None."""
    for key, what in MUST_AGREE.items():
        if meta.get(key) != first.get(key):
            return f"its {what} differ from those of {first_path}"
    kind, first_kind = (_kind(m["model"]["name"]) for m in (meta, first))
    if kind != first_kind:
        return f"{kind}, {first_path} {first_kind}: members are all single-eye or all both-eye models"
    if is_binocular(meta["model"]["name"]):
        for key in BOTH_EYE_LABELS:
            mine, theirs = (m.get("config", {}).get(key) for m in (meta, first))
            if mine != theirs:
                return (f"its {key} ({mine!r}) differs from that of {first_path} ({theirs!r}); it makes "
                        "a patient's label, in evaluation and calibration alike")  # fmt: skip
    return None


def _kind(name: str) -> str:
    return "a both-eye model" if is_binocular(name) else "a single-eye model"


def model_name(spec: dict) -> str:
    """A checkpoint's network as a reader would name it: an ensemble by its members' networks."""
    if spec["name"] != MODEL_NAME:
        return spec["name"]
    return members_name([m["name"] for m in spec["args"]["members"]])


def members_name(networks: list[str]) -> str:
    return f"ensemble of {len(networks)} ({', '.join(networks)})"


def _member_record(path: Path, meta: dict) -> dict:
    """What `info` tells of a member: which file, which recipe, how it did on validation alone."""
    return {
        "checkpoint": str(path),
        "sha256": file_sha256(path),
        "model": meta["model"]["name"],
        "config": meta.get("config", {}),
        "epoch": meta.get("epoch"),
        "val_metrics": meta.get("val_metrics", {}),
    }


def write_ensemble(checkpoints: list[str | Path], out: str | Path, argv: list[str] | None = None) -> Path:
    """OUT/best.safetensors (named as a training run's, so evaluate's reports land beside it) and
    OUT/run_info.json; returns the checkpoint's path."""
    from .train import run_info

    model, meta = build_ensemble(checkpoints)
    seen: dict[str, str] = {}  # sha256 -> the member that brought those weights
    for member in meta["ensemble"]:
        if member["sha256"] in seen:
            raise CheckpointError(f"{member['checkpoint']}: the same weights as {seen[member['sha256']]} (given "
                                  "twice, or a copy); an average of copies is that one model")  # fmt: skip
        seen[member["sha256"]] = member["checkpoint"]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / BEST
    save_model(path, model, meta)
    (out / "run_info.json").write_text(json.dumps(run_info(argv) | {"device": "cpu"}, indent=2))
    return path
