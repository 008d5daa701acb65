"""`eyescreen check-data`: a data-health report for a manifest or class folders, before training."""

from __future__ import annotations

import hashlib
from collections import Counter, defaultdict
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import NamedTuple

import numpy as np
from tqdm import tqdm

from .components import groups
from .data import SPLITS, linked_apart, read_dataset, read_split
from .near_duplicates import distances_within, thumbnail
from .preprocess import MASK_SIDE, ImageError, crop_to_field, decode_image, read_all, read_file, stored_size
from .same_eye import descriptor, descriptor_cache, pairs_among, stacked


def check_data(
    source: str | Path, classes: list[str] | None = None, split_file=None, progress: bool = True
) -> dict:
    source = Path(source)
    raw, dataset = read_dataset(source, classes)
    report: dict = {"source": str(source), "rows": len(raw), "classes": dataset.classes}
    report["per_class"] = dict(Counter(r.label for r in dataset.records))
    report["not_used"] = dict(dataset.skipped)

    spellings = defaultdict(set)  # "Normal" and "normal" would train as two classes
    for r in raw:
        if r.label:
            spellings[r.label.casefold()].add(r.label)
    report["labels_differing_in_case"] = [sorted(s) for s in spellings.values() if len(s) > 1]

    keys = Counter(r.key for r in raw)
    report["duplicate_rows"] = sorted(k for k, n in keys.items() if n > 1)

    by_hash: dict[str, list] = defaultdict(list)
    sizes, unreadable, no_field, doubtful, thumbs, greens = [], [], [], [], [], {}
    look = partial(_look, cache=descriptor_cache())
    looks = read_all(look, [r.path for r in raw])  # on threads, in order
    for k, (r, ((digest, size, thumb, green, notes, error), _)) in enumerate(
        tqdm(zip(raw, looks, strict=True), total=len(raw), desc="checking images", disable=not progress)
    ):  # _look names every problem itself
        if green is not None:
            greens[k] = green
        if digest is not None:
            by_hash[digest].append(r)
        if thumb is not None:
            thumbs.append((r, digest, thumb))
        if size is not None:
            sizes.append(size)
        doubtful += notes
        if error is not None:
            (no_field if "field of view" in error else unreadable).append(error)
    report["unreadable"] = unreadable
    report["no_field_of_view"] = no_field
    report["maybe_not_fundus"] = doubtful  # a warning, not a problem: the check is a heuristic
    duplicates = [[r.key for r in group] for group in by_hash.values() if len({r.key for r in group}) > 1]
    report["duplicate_images"] = duplicates
    report["same_image_two_patients"] = [
        [f"{r.key} ({r.group})" for r in group]
        for group in by_hash.values()
        if len({r.group for r in group}) > 1
    ]
    resaved = _resaved(thumbs)
    report["resaved_images"] = [[r.key for r in group] for group in resaved]
    report["resaved_two_patients"] = [[f"{r.key} ({r.group})" for r in group] for group in resaved
                                      if len({r.group for r in group}) > 1]  # fmt: skip
    copies = [group for group in by_hash.values() if len({r.key for r in group}) > 1] + resaved
    same_eye = _same_eye(raw, greens, copies)
    report["same_eye_two_patients"] = [
        [f"{a.key} ({a.group})", f"{b.key} ({b.group})", f"alike {score:.2f}"] for a, b, score in same_eye
    ]
    if sizes:
        w, h = np.array(sizes).T
        report["image_size"] = {
            "width": [int(w.min()), int(np.median(w)), int(w.max())],
            "height": [int(h.min()), int(np.median(h)), int(h.max())],
        }
    eyes = defaultdict(set)
    for r in dataset.records:
        if r.group.startswith("patient:"):
            eyes[r.group].add(r.eye)
    report["patients"] = len({r.group for r in dataset.records})
    report["patients_with_one_eye"] = sum(1 for e in eyes.values() if len(e) == 1)
    per_eye = dataset.photographs_per_eye()  # two fields (disc- and macula-centred) are common
    report["patients_with_several_photographs_of_an_eye"] = len({p for (p, _), n in per_eye.items() if n > 1})
    report["many_of_an_eye"] = dataset.many_of_an_eye()
    if not source.is_file():  # class folders: patients come from file names, where they say so
        report["images_without_a_patient_in_the_name"] = dataset.images_without_patient()
    if split_file:
        split = read_split(split_file, dataset)  # raises on a patient in two splits
        report["per_split"] = {
            s: dict(Counter(r.label for r in dataset.records if split[r.key] == s)) for s in SPLITS
        }
        report["copies_across_splits"] = linked_apart(split, copies)
        report["same_eye_across_splits"] = linked_apart(split, [[a, b] for a, b, _ in same_eye])
    return report


class _Look(NamedTuple):
    """One file as check-data sees it (see _look); None where it could not be had."""

    digest: str | None = None
    size: tuple[int, int] | None = None
    thumb: np.ndarray | None = None  # near_duplicates' thumbnail
    green: np.ndarray | None = None  # same_eye's descriptor
    notes: Sequence[str] = ()  # warnings
    error: str | None = None


def _look(path: Path, cache) -> _Look:
    """One file as check-data sees it: content hash, stored size, thumbnail (near_duplicates), same-eye
    descriptor (from the image cache, which training shares), warnings, and why it cannot be used (or
    None). The file is read once, for all of them (a network share pays for each reading); it is decoded
    only as large as the field-of-view search looks, which makes a camera's photograph several times
    faster; the size reported is the stored one."""
    try:
        data = read_file(path)
    except ImageError as e:
        return _Look(error=str(e))
    digest, size, notes = hashlib.sha256(data).hexdigest(), None, []
    try:
        im = decode_image(data, path, at_least=MASK_SIDE)
        size = stored_size(data)
        crop_to_field(im, path, notes)
        green = descriptor(cache, path, data)
    except ImageError as e:
        return _Look(digest, size, notes=notes, error=str(e))
    return _Look(digest, size, thumbnail(im), green, notes)


def _same_eye(raw: list, greens: dict, copies: list[list]) -> list[tuple]:
    """(record, record, similarity) for photographs under different patients that look like one eye taken
    again (same_eye; `greens`: its descriptors by index into `raw`); copies are the content hash's and the
    thumbnails' to report."""
    copied = {frozenset((a.key, b.key)) for group in copies for a in group for b in group}
    found = pairs_among(*stacked(greens), sides=[r.eye for r in raw])
    return [(raw[i], raw[j], score) for i, j, score in found
            if raw[i].group != raw[j].group and frozenset((raw[i].key, raw[j].key)) not in copied]  # fmt: skip


def _resaved(thumbs: list) -> list[list]:
    """Groups of records whose files hold the same photograph under different bytes (near_duplicates).
    Byte-identical files are the content hash's to report."""
    if not thumbs:
        return []
    pairs = distances_within(np.stack([t for *_, t in thumbs]))
    pairs = [(i, j, d) for i, j, d in pairs if thumbs[i][1] != thumbs[j][1]]
    return [[thumbs[k][0] for k in group] for group in groups(len(thumbs), pairs)]


def format_report(rep: dict) -> str:
    lines = [
        f"data health: {rep['source']} ({rep['rows']} rows, {rep['patients']} patients with usable labels)"
    ]
    lines.append(
        "images per class: " + ", ".join(f"{c} {rep['per_class'].get(c, 0)}" for c in rep["classes"])
    )
    for reason, n in sorted(rep["not_used"].items()):
        lines.append(f"not used ({reason}): {n}")
    for s, counts in rep.get("per_split", {}).items():
        lines.append(f"{s:>5}: " + ", ".join(f"{c} {counts.get(c, 0)}" for c in rep["classes"]))
    if "image_size" in rep:
        w, h = rep["image_size"]["width"], rep["image_size"]["height"]
        lines.append(f"image size (min/median/max): width {w[0]}/{w[1]}/{w[2]}, height {h[0]}/{h[1]}/{h[2]}")
    lines.append(f"patients with one eye: {rep['patients_with_one_eye']}")
    if rep.get("patients_with_several_photographs_of_an_eye"):
        lines.append(f"patients with several photographs of an eye: {rep['patients_with_several_photographs_of_an_eye']} "
                     "(a single-eye model trains and is scored on each photograph; a both-eye model and the "
                     "fellow-eye blend take one photograph per side; `predict --pairs` screens every combination)")  # fmt: skip
    if rep.get("many_of_an_eye"):
        lines.append(f"  - {rep['many_of_an_eye']}")
    if rep.get("images_without_a_patient_in_the_name"):
        lines.append(f"images without a patient in the name (each its own patient; name them like 12_left.jpg "
                     f"so that a split keeps both eyes together): {rep['images_without_a_patient_in_the_name']}")  # fmt: skip
    for title, key in (
        ("labels that differ only in case (two classes to training)", "labels_differing_in_case"),
        ("duplicate rows", "duplicate_rows"),
        ("unreadable files", "unreadable"),
        ("no fundus field of view", "no_field_of_view"),
        ("may not be colour fundus photographs (heuristic; look at them)", "maybe_not_fundus"),
        ("identical images under different names", "duplicate_images"),
        (
            "identical images under different patients (train keeps those patients in one split)",
            "same_image_two_patients",
        ),
        (
            "the same photograph saved twice (near-identical pixels, other bytes) under different names",
            "resaved_images",
        ),
        (
            "the same photograph saved twice under different patients (train keeps those patients in one split)",
            "resaved_two_patients",
        ),
        (
            "the same photograph in two splits (the later split's numbers would not be clean)",
            "copies_across_splits",
        ),
        (
            "maybe one eye photographed again under different patients (vessels alike: a heuristic, look at "
            "them; if so, give them one patient id. train keeps those patients in one split)",
            "same_eye_two_patients",
        ),
        (
            "maybe one eye in two splits (the later split's numbers would not be clean if so)",
            "same_eye_across_splits",
        ),
    ):
        if key not in rep:  # across splits: only with --split
            continue
        items = rep[key]
        lines.append(f"{title}: {len(items) if items else 'none'}")
        lines += [f"  - {', '.join(i) if isinstance(i, list) else i}" for i in items[:20]]
        if len(items) > 20:
            lines.append(f"  ... and {len(items) - 20} more")
    return "\n".join(lines)


def problems(rep: dict) -> int:
    keys = (
        "labels_differing_in_case",
        "duplicate_rows",
        "unreadable",
        "no_field_of_view",
        "same_image_two_patients",
        "resaved_two_patients",
        "copies_across_splits",
    )
    return sum(len(rep.get(k, [])) for k in keys)
