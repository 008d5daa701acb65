"""Auxiliary findings: extra supervision from a manifest column of free-text diagnoses.

A clinical table holds many eyes outside the screened classes (cataract, myopia, drusen, membranes,
...), and a labelled eye often carries more findings than its class. Predicting those findings from the
same pooled features, on every eye of the training patients, gives a from-scratch backbone more to learn
from. The extra head lives only while training: checkpoints, prediction and explanations are unchanged.

Leakage: an eye joins only if its patient is in the training split or in no split at all; eyes of
validation and test patients never do.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .data import DataError, Dataset, Record, image_key, read_manifest, read_table

SEPARATOR = ";"
MIN_COUNT = 20  # a finding rarer than this among the training eyes is not worth a head output


@dataclass
class Findings:
    vocabulary: list[str]  # the findings the head predicts, most frequent first
    extra: list[Record]  # training-patient eyes without a selected class, which join training
    tags: dict[str, frozenset[str]]  # image key -> its findings, for every row of the manifest

    def targets(self, records: list[Record]) -> torch.Tensor:
        """Multi-hot [N, len(vocabulary)] for these records."""
        index = {f: i for i, f in enumerate(self.vocabulary)}
        out = torch.zeros((len(records), len(self.vocabulary)), dtype=torch.long)
        for row, r in enumerate(records):
            for f in self.tags.get(r.key, ()):
                if f in index:
                    out[row, index[f]] = 1
        return out

    def summary(self) -> str:
        return (
            f"findings head: {len(self.vocabulary)} findings ({', '.join(self.vocabulary)}); "
            f"{len(self.extra)} more training eyes without a selected class"
        )


def read_findings(manifest: Path, column: str) -> dict[str, frozenset[str]]:
    columns, rows = read_table(manifest)
    if column not in columns:
        raise DataError(
            f"{manifest}: no column {column!r} for --findings; found {', '.join(columns) or 'none'}"
        )
    tags = {}
    for _, row in rows:
        tags[image_key(row["image"])] = frozenset(
            t.strip().lower() for t in (row[column] or "").split(SEPARATOR) if t.strip()
        )
    return tags


def training_findings(dataset: Dataset, split: dict, column: str, min_count: int = MIN_COUNT) -> Findings:
    """The findings vocabulary and the extra eyes, from the training patients only."""
    if not dataset.source.is_file():
        raise DataError(f"{dataset.source}: --findings needs a manifest CSV, not a folder of classes")
    tags = read_findings(dataset.source, column)
    held_out = {r.group for r in dataset.records if split[r.key] != "train"}
    selected = {r.key for r in dataset.records}
    extra = [r for r in read_manifest(dataset.source) if r.key not in selected and r.group not in held_out]
    train_keys = [r.key for r in dataset.records if split[r.key] == "train"] + [r.key for r in extra]
    counts = Counter(t for k in train_keys for t in tags.get(k, ()))
    vocabulary = [t for t, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])) if n >= min_count]
    if not vocabulary:
        raise DataError(
            f"{dataset.source}: no finding in column {column!r} occurs {min_count} times among the "
            "training eyes; nothing for the findings head to learn (train without it: --findings '' or "
            "--preset graham-augment)"
        )
    return Findings(vocabulary, extra, tags)


def classifier_head(model: nn.Module) -> str:
    """The name of the model's last linear layer: its input is the pooled feature vector."""
    names = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not names:
        raise ValueError(f"{type(model).__name__}: no linear classifier layer for a findings head")
    return names[-1]


class WithFindings(nn.Module):
    """A classifier plus a linear head on its pooled features that predicts the findings."""

    def __init__(self, model: nn.Module, n_findings: int):
        super().__init__()
        self.model = model
        self.head_name = classifier_head(model)
        self.findings = nn.Linear(model.get_submodule(self.head_name).in_features, n_findings)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # The hook lives only for this call, so the model (and any copy of it, such as an EMA) is
        # left exactly as built.
        seen: list[torch.Tensor] = []
        hook = self.model.get_submodule(self.head_name).register_forward_pre_hook(
            lambda module, inputs: seen.append(inputs[0])
        )
        try:
            logits = self.model(x)
        finally:
            hook.remove()
        return logits, self.findings(seen[0])


def findings_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy summed over findings, averaged over eyes: each finding counts fully."""
    return nn.functional.binary_cross_entropy_with_logits(
        logits.float(), targets.float(), reduction="sum"
    ) / max(len(targets), 1)


def class_targets(records: list[Record], classes: list[str]) -> np.ndarray:
    """Class index per record, -1 for eyes without a selected class."""
    index = {c: i for i, c in enumerate(classes)}
    return np.array([index.get(r.label, -1) for r in records], dtype=np.int64)
