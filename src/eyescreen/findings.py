"""Auxiliary findings: extra supervision from a manifest column of free-text diagnoses.

A clinical table holds many eyes outside the screened classes (cataract, myopia, drusen, membranes,
...), and a labelled eye often carries more findings than its class. Predicting those findings from the
same pooled features, on every eye of the training patients, gives a from-scratch backbone more to learn
from. The extra head lives only while training: checkpoints, prediction and explanations are unchanged.

A numeric column (age, say) is supervision too: "above each decile of the training eyes' values", as
several findings (`--findings keywords,age`).

Leakage: an eye joins only if its patient is in the training split or in no split at all; eyes of
validation and test patients never do.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from .data import DataError, Dataset, Record, is_numeric, parse_number, read_columns, read_manifest
from .photo_links import without_links_to

SEPARATOR = ";"
MIN_COUNT = 20  # a finding rarer than this among the training eyes is not worth a head output
# the option often comes from a preset, not from the command line: how to do without it
WITHOUT = " (the graham-findings presets set it; --findings '' trains without the findings head)"
# A numeric column (age, say) is learnt as "above each decile of the training eyes": ordinal targets
# that the multi-label head takes as they are.
DECILES = np.linspace(0.1, 0.9, 9)


@dataclass
class Findings:
    vocabulary: list[str]  # the findings the head predicts, most frequent first
    extra: list[Record]  # training-patient eyes without a selected class, which join training
    tags: dict[str, frozenset[str]]  # image key -> its findings, for every row of the manifest
    # image key -> findings not known for it (a numeric cell left empty): no loss on them
    unknown: dict[str, frozenset[str]] = field(default_factory=dict)
    linked_left_out: int = 0  # eyes without a class that are a held-out eye's copy or twin under another id

    def targets(self, records: list[Record]) -> torch.Tensor:
        """[N, len(vocabulary)]: 1 present, 0 absent, -1 unknown, for these records."""
        index = {f: i for i, f in enumerate(self.vocabulary)}
        out = torch.zeros((len(records), len(self.vocabulary)), dtype=torch.long)
        for row, r in enumerate(records):
            for f in self.tags.get(r.key, ()):
                if f in index:
                    out[row, index[f]] = 1
            for f in self.unknown.get(r.key, ()):
                if f in index:
                    out[row, index[f]] = -1
        return out

    def summary(self) -> str:
        return (
            f"findings head: {len(self.vocabulary)} findings ({', '.join(self.vocabulary)}); "
            f"{len(self.extra)} more training eyes without a selected class"
            + (
                f" ({self.linked_left_out} left out: held-out eyes under other ids, copied or photographed again)"
                if self.linked_left_out
                else ""
            )
        )


def parse_columns(spec: str) -> list[str]:
    """`--findings keywords,age`: the manifest columns, in order."""
    return [c.strip() for c in spec.split(",") if c.strip()]


def text_tags(cells: dict[str, str]) -> dict[str, frozenset[str]]:
    """A column of ';'-separated findings: each one a tag, case-folded; an empty cell has none."""
    return {
        k: frozenset(t.strip().lower() for t in v.split(SEPARATOR) if t.strip()) for k, v in cells.items()
    }


def numeric_tags(
    column: str, cells: dict[str, str], train_keys: list[str]
) -> tuple[dict[str, frozenset[str]], dict[str, frozenset[str]]]:
    """A numeric column as "column > t" for each decile t of the training eyes' values; an eye with an
    empty cell has them all unknown."""
    values = {k: parse_number(v) for k, v in cells.items()}
    seen = [values[k] for k in train_keys if values.get(k) is not None]
    if not seen:
        return {}, {}
    thresholds = sorted({float(f"{t:.3g}") for t in np.quantile(seen, DECILES)})
    names = [f"{column} > {t:g}" for t in thresholds]
    tags = {
        k: frozenset(n for n, t in zip(names, thresholds, strict=True) if v > t)
        for k, v in values.items()
        if v is not None
    }
    unknown = {k: frozenset(names) for k, v in values.items() if v is None}
    return tags, unknown


def training_findings(
    dataset: Dataset, split: dict, spec: str, min_count: int = MIN_COUNT, cache_dir=None
) -> Findings:
    """The findings vocabulary and the extra eyes, from the training patients only. `spec` names one
    column or several, comma-separated: text columns of findings, or numeric ones."""
    if not dataset.source.is_file():
        raise DataError(
            f"{dataset.source}: --findings needs a manifest CSV, not a folder of classes{WITHOUT}"
        )
    columns = parse_columns(spec)
    cells = read_columns(dataset.source, columns, f"for --findings{WITHOUT}")
    held_out = {r.group for r in dataset.records if split[r.key] != "train"}
    selected = {r.key for r in dataset.records}
    extra = [r for r in read_manifest(dataset.source) if r.key not in selected and r.group not in held_out]
    linked: list = []
    if extra and held_out:  # a held-out eye saved or photographed again under another id would leak back in
        held = [r for r in dataset.records if split[r.key] != "train"]
        sides = [r.eye for r in extra + held]
        kept, linked = without_links_to(
            [r.path for r in extra], [r.path for r in held], cache_dir, sides=sides
        )
        kept = set(kept)  # once: the condition below would otherwise build a set for every eye
        extra = [r for r in extra if r.path in kept]
    train_keys = [r.key for r in dataset.records if split[r.key] == "train"] + [r.key for r in extra]
    tags: dict[str, frozenset[str]] = {}
    unknown: dict[str, frozenset[str]] = {}
    for column in columns:
        if is_numeric(list(cells[column].values())):
            column_tags, column_unknown = numeric_tags(column, cells[column], train_keys)
        else:
            column_tags, column_unknown = text_tags(cells[column]), {}
        for into, part in ((tags, column_tags), (unknown, column_unknown)):
            for k, found in part.items():
                into[k] = into.get(k, frozenset()) | found
    counts = Counter(t for k in train_keys for t in tags.get(k, ()))
    vocabulary = [t for t, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])) if n >= min_count]
    if not vocabulary:
        raise DataError(
            f"{dataset.source}: no finding in {', '.join(map(repr, columns))} occurs {min_count} times among "
            "the training eyes; nothing for the findings head to learn (train without it: --findings '' or "
            "--preset graham-augment)"
        )
    return Findings(vocabulary, extra, tags, unknown, len(linked))


class WithFindings(nn.Module):
    """A classifier plus a linear head on its pooled features that predicts the findings.

    A both-eye model's pooled features are per eye ([B, 2, D]), so its findings are too ([B, 2, F])."""

    def __init__(self, model: nn.Module, n_findings: int):
        super().__init__()
        self.model = model
        self.head_name = model.head_layer  # its input is the pooled feature vector
        self.findings = nn.Linear(model.get_submodule(self.head_name).in_features, n_findings)

    def forward(self, *inputs: torch.Tensor) -> tuple:
        """The model's output for `inputs` (a both-eye model's: eye and patient logits), and the findings'
        logits."""
        # The hook lives only for this call, so the model (and any copy of it, such as an EMA) is
        # left exactly as built.
        seen: list[torch.Tensor] = []
        hook = self.model.get_submodule(self.head_name).register_forward_pre_hook(
            lambda module, inputs: seen.append(inputs[0])
        )
        try:
            logits = self.model(*inputs)
        finally:
            hook.remove()
        return logits, self.findings(seen[0])


def findings_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy summed over findings, averaged over eyes: each finding counts fully.
    Unknown targets (-1) add nothing."""
    known = targets >= 0
    losses = nn.functional.binary_cross_entropy_with_logits(
        logits.float(), targets.clamp(min=0).float(), reduction="none"
    )
    return (losses * known).sum() / max(len(targets), 1)


def class_targets(records: list[Record], classes: list[str]) -> np.ndarray:
    """Class index per record, -1 for eyes without a selected class."""
    index = {c: i for i, c in enumerate(classes)}
    return np.array([index.get(r.label, -1) for r in records], dtype=np.int64)
