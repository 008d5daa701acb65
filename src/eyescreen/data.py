"""Manifests and folder layouts -> records; patient-grouped, stratified, seeded splits.

A *record* is one labelled (or unlabelled) eye photograph. Class names always come from the data
(optionally filtered and ordered by the user); nothing here knows about particular diseases.
"""

from __future__ import annotations

import csv
import hashlib
import io
import warnings
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from .components import linked_patient_sets

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".dcm")
SPLITS = ("train", "val", "test")
MIN_VAL_PER_CLASS = 10  # validation images of a class below which its sensitivity moves in steps of >10%
MAX_LINKED = 6  # patients in one set linked by copies or one eye, beyond which the set is not moved
MANY_OF_AN_EYE = 8  # photographs of one eye of one patient beyond which a file-name scheme was read wrongly?


class DataError(ValueError):
    """A manifest, folder or split file that cannot be used, with a message naming it."""


@dataclass(frozen=True)
class Record:
    path: Path  # absolute path to the image file
    key: str  # path as written in the manifest / relative to the folder root: stable across machines
    label: str | None
    group: str  # patient id, or the image key when there is none: both eyes of a patient share it
    eye: str | None = None


@dataclass
class Dataset:
    """Records usable for supervised training, the ordered class names, and what was left out."""

    records: list[Record]
    classes: list[str]
    source: Path
    skipped: Counter = field(default_factory=Counter)  # reason -> count

    def labels(self) -> np.ndarray:
        index = {c: i for i, c in enumerate(self.classes)}
        return np.array([index[r.label] for r in self.records], dtype=np.int64)

    def images_without_patient(self) -> int:
        """Images that are their own patient: no patient_id in the manifest, no patient in the file name."""
        return sum(r.group.startswith("image:") for r in self.records)

    def photographs_per_eye(self) -> Counter:
        """(patient, side) -> the number of distinct photographs of that eye, for patients known by id."""
        from .eye_names import SIDES

        photographs = {(r.group.split(":", 1)[1], SIDES.get((r.eye or "").lower()), r.path) for r in self.records
                       if r.group.startswith("patient:") and SIDES.get((r.eye or "").lower())}  # fmt: skip
        return Counter((patient, side) for patient, side, _ in photographs)

    def many_of_an_eye(self) -> str | None:
        """A warning where one patient has more photographs of an eye than one visit takes: a file-name
        scheme read as one patient would put them all in one split."""
        counts = self.photographs_per_eye()
        if not counts:
            return None
        (patient, side), n = counts.most_common(1)[0]
        if n <= MANY_OF_AN_EYE:
            return None
        return (f"patient {patient} has {n} photographs of the {side} eye, more than one visit takes: if it is not "
                "one patient (a naming scheme read as one), name the files <patient>_<side>.jpg or give a manifest "
                "with patient_id, or its photographs all go to one split")  # fmt: skip

    def summary(self) -> str:
        counts = Counter(r.label for r in self.records)
        groups = len({r.group for r in self.records})
        lines = [f"{self.source}: {len(self.records)} labelled images from {groups} patients"]
        lines += [f"  {c:>14}: {counts[c]}" for c in self.classes]
        lines += [f"  not used ({reason}): {n}" for reason, n in sorted(self.skipped.items())]
        if self.source.is_dir():  # class folders: say how the patients were found
            alone = self.images_without_patient()
            lines.append(f"  patients from file names (12_left.jpg, 12_right.jpg: patient 12): "
                         f"{len(self.records) - alone} images; {alone} others, each its own patient")  # fmt: skip
        many = self.many_of_an_eye()
        lines += [f"  warning: {many}"] if many else []
        return "\n".join(lines)


def parse_classes(text: str | None) -> list[str] | None:
    if not text:
        return None
    classes = [c.strip() for c in text.split(",") if c.strip()]
    if len(set(classes)) != len(classes):
        raise DataError(f"--classes lists a class twice: {text!r}")
    return classes


def checkpoint_data(meta: dict, given: str | Path | None = None) -> str | Path:
    """The data a checkpoint's split refers to: `given` (the same data at another place, say on another
    machine) or where the checkpoint was trained."""
    if given:
        return given
    recorded = meta["data"]
    if not Path(recorded).exists():
        raise DataError(
            f"{recorded}: the data this checkpoint was trained on is not there (moved, or another machine?); "
            "give its place with --data"
        )
    return recorded


def load_dataset(source: str | Path, classes: list[str] | None = None, allow_absent: bool = False) -> Dataset:
    """Read a manifest CSV or a folder-per-class layout and keep the rows usable for training.
    `allow_absent`: `classes` may name classes these data lack (a model's, evaluated on other data)."""
    return read_dataset(source, classes, allow_absent)[1]


def read_dataset(
    source: str | Path, classes: list[str] | None = None, allow_absent: bool = False
) -> tuple[list[Record], Dataset]:
    """Every record read (labelled or not, any class) and the dataset kept from them, in one reading.
    `allow_absent` (a model's `classes` on other data): a label that differs from one of them only in case
    is read as that class ("Normal" as "normal"), in the records returned too."""
    source = Path(source)
    if not source.exists():
        raise DataError(f"{source}: no such manifest or folder")
    left_aside: Counter = Counter()
    raw = read_records(source, left_aside)
    if classes is not None and allow_absent:
        raw = _labels_as_spelt(raw, classes)
    dataset = _select_classes(raw, classes, source, allow_absent)
    dataset.skipped.update(left_aside)
    return raw, dataset


def read_records(source: Path, left_aside: Counter | None = None) -> list[Record]:
    """Every image of a manifest (labelled or not) or of a folder of class folders, before any selection."""
    return read_manifest(source) if source.is_file() else read_class_folders(source, left_aside)


SEPARATORS = ",;\t"  # what manifests are separated by (spreadsheets' "CSV" differs by locale)


def read_table(path: Path) -> tuple[list[str], list[tuple[int, dict]]]:
    """A manifest's columns and its rows with their line numbers. Separated by commas, or by semicolons or
    tabs (spreadsheets in many locales save "CSV" so); UTF-8, with or without a byte-order mark."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text (byte {e.start}); save it as CSV in UTF-8") from None
    header = text.split("\n", 1)[0]
    separator = max(SEPARATORS, key=header.count)
    reader = csv.DictReader(io.StringIO(text, newline=""), delimiter=separator)
    # Column names trimmed ("image, label" is common); cells beyond the header dropped.
    rows = [(reader.line_num, {k.strip(): v for k, v in row.items() if k is not None}) for row in reader]
    for line, row in rows:
        _check_separator(path, line, row, separator)
    return [c.strip() for c in reader.fieldnames or []], rows


def _check_separator(path: Path, line: int, row: dict, separator: str) -> None:
    """A row read as one cell, where the header has several, that holds another separator was saved
    otherwise than the header (edited by hand, or pasted from another locale): say so, rather than read
    its image path as "a.jpg;normal" with no label. (A row short of only its last cells is fine, even with
    ';' inside a cell of findings.)"""
    cells = [v for v in row.values() if v is not None]
    if len(row) < 2 or len(cells) != 1:
        return
    other = next((c for c in SEPARATORS if c != separator and c in cells[0]), None)
    if other is not None:
        names = {",": "','", ";": "';'", "\t": "a tab"}
        raise DataError(
            f"{path}: line {line}: one cell where the header has {len(row)}, with {names[other]} in it: the "
            f"header is separated by {names[separator]}; save the file with one separator throughout"
        )


def image_key(written: str | None) -> str:
    """An image path as a manifest gives it, with Windows separators made portable."""
    return (written or "").strip().replace("\\", "/")


def manifest_columns(data: str | Path) -> list[str]:
    """The header of a manifest CSV; none for a folder of class folders."""
    path = Path(data)
    return read_table(path)[0] if path.is_file() else []


def read_columns(manifest: Path, columns: list[str], purpose: str) -> dict[str, dict[str, str]]:
    """column -> image key -> its cell, stripped, for extra columns of a manifest (`purpose` names the
    option that asked, for the error)."""
    header, rows = read_table(manifest)
    missing = [c for c in columns if c not in header]
    if missing:
        raise DataError(
            f"{manifest}: no column {', '.join(map(repr, missing))} {purpose}; found {', '.join(header) or 'none'}"
        )
    return {c: {image_key(row["image"]): (row[c] or "").strip() for _, row in rows} for c in columns}


NOT_GIVEN = {"", "nan", "na", "n/a", "null"}  # how tables write an empty cell of a numeric column


def parse_number(text: str) -> float | None:
    """The cell as a number, or None (not a number, or NaN)."""
    try:
        value = float(text)
    except ValueError:
        return None
    return None if np.isnan(value) else value


def is_numeric(cells: list[str]) -> bool:
    """Whether a column is numbers, its empty cells aside."""
    given = [v for v in cells if v.lower() not in NOT_GIVEN]
    return bool(given) and all(parse_number(v) is not None for v in given)


def manifest_fingerprint(data: str | Path) -> str | None:
    """sha256 of a manifest's bytes (None for a folder of classes): the same data under another path."""
    path = Path(data)
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None


def read_manifest(manifest: Path) -> list[Record]:
    """Rows of a CSV with columns image,label and optional patient_id,eye; paths relative to it."""
    columns, rows = read_table(manifest)
    missing = {"image", "label"} - set(columns)
    if missing:
        raise DataError(
            f"{manifest}: missing column(s) {', '.join(sorted(missing))}; "
            f"expected image,label[,patient_id,eye], found {', '.join(columns) or 'none'}"
        )
    root = manifest.parent
    records = []
    for line, row in rows:
        key = image_key(row["image"])
        if not key:
            raise DataError(f"{manifest}: line {line}: empty image path")
        patient = (row.get("patient_id") or "").strip()
        records.append(
            Record(
                path=(root / key).resolve(),
                key=key,
                label=(row["label"] or "").strip() or None,
                group=f"patient:{patient}" if patient else f"image:{key}",
                eye=(row.get("eye") or "").strip().lower() or None,
            )
        )
    return records


def read_class_folders(root: Path, left_aside: Counter | None = None) -> list[Record]:
    """`root/<class>/*.jpg`: every sub-folder is a class. A file named like 12_left.jpg / 12_right.jpg (or a
    DICOM file with Patient ID 12 and a laterality) belongs to patient 12 (`eye_names`), wherever its class
    folder, so that a split keeps both eyes together; any other image is its own patient. Files whose names
    are not an image's are counted by suffix into `left_aside` when given."""
    from .eye_names import patient_and_side_of

    records = []
    for class_dir in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        images, others = scan_images([class_dir])
        if left_aside is not None:
            left_aside.update(f"not an image by its name: {q.suffix.lower() or 'no suffix'}" for q in others)
        for path in images:
            key = path.relative_to(root).as_posix()
            named = patient_and_side_of(path)
            group, eye = (f"patient:{named[0]}", named[1]) if named else (f"image:{key}", None)
            records.append(Record(path=path.resolve(), key=key, label=class_dir.name, group=group, eye=eye))
    if not records:
        raise DataError(f"{root}: no images found in class sub-folders (expected {root}/<class>/*.jpg)")
    return records


def scan_images(paths: list[str | Path]) -> tuple[list[Path], list[Path]]:
    """Expand files and folders (recursively) into image files, and the other files found in those
    folders, left aside because their names are not an image's (hidden files, such as the `._x.jpg`
    copies macOS leaves on shared drives, are neither). A file given by name is always an image here:
    if it cannot be read, the loader says so rather than it being dropped."""
    found: list[Path] = []
    others: list[Path] = []
    for p in map(Path, paths):
        if not p.is_dir():
            found.append(p)
            continue
        for q in sorted(p.rglob("*")):
            # a link whose target is gone is kept: the loader names it, rather than it going missing unsaid
            broken = q.is_symlink() and not q.exists()
            if (q.is_file() or broken) and not any(part.startswith(".") for part in q.relative_to(p).parts):
                (found if q.suffix.lower() in IMAGE_EXTENSIONS else others).append(q)
    return found, others


def images_given(paths: list[str | Path], say=print) -> list[Path]:
    """The image files of the files and folders a user named, saying which files were left aside; none
    at all is an error (a typo'd folder must not give an empty result that looks like success)."""
    images, others = scan_images(paths)
    if others:
        say(describe_left_aside(others))
    if not images:
        raise DataError(f"no image files in {', '.join(map(str, paths))}")
    return images


def list_images(paths: list[str | Path]) -> list[Path]:
    """Expand files and folders (recursively) into a sorted list of image files."""
    return scan_images(paths)[0]


def describe_left_aside(others: list[Path]) -> str:
    """One line on the files a folder scan left aside, counted by suffix."""
    suffixes = Counter(q.suffix.lower() or "no suffix" for q in others)
    counts = ", ".join(f"{s}: {n}" for s, n in suffixes.most_common())
    return (
        f"left aside, not images by their names: {len(others)} file{'s' if len(others) != 1 else ''} "
        f"({counts}); give a file by name to read it anyway"
    )


def _select_classes(
    raw: list[Record], classes: list[str] | None, source: Path, allow_absent: bool = False
) -> Dataset:
    present = sorted({r.label for r in raw if r.label is not None})
    if classes is None:
        classes = present
    else:
        unknown = [c for c in classes if c not in present]
        if unknown and not allow_absent:
            raise DataError(
                f"{source}: class(es) {', '.join(unknown)} not found in the data; present: {', '.join(present)}"
            )
    if len(classes) < 2:
        raise DataError(f"{source}: need at least two classes, found {classes}")
    keep, skipped = [], Counter()
    wanted = set(classes)
    for r in raw:
        if r.label is None:
            skipped["empty label"] += 1
        elif r.label not in wanted:
            skipped[f"class {r.label} not selected"] += 1
        else:
            keep.append(r)
    if allow_absent and present and not keep:
        raise DataError(
            f"{source}: none of its classes ({', '.join(present)}) is one of the model's ({', '.join(classes)}); "
            "label the images with the model's class names"
        )
    return Dataset(records=keep, classes=list(classes), source=source, skipped=skipped)


def _labels_as_spelt(raw: list[Record], classes: list[str]) -> list[Record]:
    """Labels that differ from one of `classes` only in case, spelt as `classes` spells them."""
    spelling = {c.casefold(): c for c in classes}
    return [
        replace(r, label=spelling[r.label.casefold()])
        if r.label is not None and r.label not in spelling.values() and r.label.casefold() in spelling
        else r
        for r in raw
    ]


# --- splits -----------------------------------------------------------------------------------------


def make_split(
    dataset: Dataset, val_fraction: float = 0.1, test_fraction: float = 0.1, seed: int = 0
) -> dict:
    """Assign every record to train/val/test with patients kept whole and labels stratified.

    StratifiedGroupKFold cuts the data into 20 patient-disjoint, label-balanced folds (fewer on small
    data); the test and validation sets take whole folds, so fractions are rounded to multiples of 5%.
    """
    from sklearn.model_selection import StratifiedGroupKFold

    groups = np.array([r.group for r in dataset.records])
    labels = dataset.labels()
    # Small data: no more folds than patients, nor than members of the largest class (sklearn's limit).
    n_folds = min(20, len(set(groups)), int(np.bincount(labels).max()))
    n_test = max(1, round(test_fraction * n_folds))
    n_val = max(1, round(val_fraction * n_folds))
    if not (0 < val_fraction < 0.5 and 0 < test_fraction < 0.5):
        raise DataError(f"val/test fractions {val_fraction}/{test_fraction} must each be between 0 and 0.5")
    if n_test + n_val >= n_folds:
        raise DataError(
            f"{dataset.source}: {len(set(groups))} patients are too few for train/val/test splits"
        )
    splitter = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    fold_of = np.empty(len(groups), dtype=np.int64)
    with warnings.catch_warnings():  # rare classes with fewer members than folds are expected here
        warnings.simplefilter("ignore", UserWarning)
        for fold, (_, idx) in enumerate(splitter.split(np.zeros(len(groups)), labels, groups)):
            fold_of[idx] = fold
    names = np.where(fold_of < n_test, "test", np.where(fold_of < n_test + n_val, "val", "train"))
    return {r.key: str(s) for r, s in zip(dataset.records, names, strict=True)}


def keep_linked_together(dataset: Dataset, split: dict, links: list[list[int]]) -> tuple[dict, list]:
    """Put patients who share a photograph or an eye in one split: `links` are groups of indices into the
    records that hold one photograph or one eye (`photo_links.linked`). A patient registered twice, a file
    exported again, a follow-up visit under a new id: split apart, one eye would be trained on under one
    id and tested under the other. Linked patients go to the first of train/val/test that holds any of
    them, so held-out eyes never have a twin in train and nothing else moves: the split of data without
    such links is `make_split`'s. A set of more than `MAX_LINKED` patients is left as the split put it:
    one person is not registered that often, and sending them all to train would empty the held-out
    parts. Returns the split and, for each set of linked patients, their ids and their split (None: left)."""
    members: dict[str, list[Record]] = {}
    for r in dataset.records:
        members.setdefault(r.group, []).append(r)
    split, linked = dict(split), []
    for names in linked_patient_sets([r.group for r in dataset.records], links):
        if len(names) > MAX_LINKED:  # not one person's visits: something else alike (a camera's artefact)
            linked.append((names, None))
            continue
        where = min((split[r.key] for g in names for r in members[g]), key=SPLITS.index)
        for g in names:
            for r in members[g]:
                split[r.key] = where
        linked.append((names, where))
    return split, linked


def linked_apart(split: dict, links: list[list[Record]]) -> list[list[str]]:
    """Each group of records of one photograph or eye that `split` puts in two or more splits, as
    "key (split)"; records the split does not cover (classes left out) are not listed."""
    return [
        [f"{key} ({split[key]})" for key in dict.fromkeys(r.key for r in group) if key in split]
        for group in links
        if len({split[r.key] for r in group if r.key in split}) > 1
    ]


def write_split(split: dict, dataset: Dataset, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image", "patient", "label", "split"])
        for r in dataset.records:
            w.writerow([r.key, r.group, r.label, split[r.key]])
    tmp.replace(path)


def read_split(path: str | Path, dataset: Dataset) -> dict:
    """Read a split file and check it covers the data and keeps every patient in one split."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: split file not found")
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        if not {"image", "split"} <= set(reader.fieldnames or []):
            raise DataError(f"{path}: a split file needs columns image,split")
        split = {}
        for row in reader:
            if row["split"] not in SPLITS:
                raise DataError(
                    f"{path}: line {reader.line_num}: unknown split {row['split']!r} (use {'/'.join(SPLITS)})"
                )
            split[row["image"]] = row["split"]
    missing = [r.key for r in dataset.records if r.key not in split]
    if missing:
        raise DataError(f"{path}: {len(missing)} image(s) of the data have no split, e.g. {missing[0]}")
    check_groups_disjoint(dataset, split, path)
    return {r.key: split[r.key] for r in dataset.records}


def check_groups_disjoint(dataset: Dataset, split: dict, where: Path | str) -> None:
    seen: dict[str, str] = {}
    for r in dataset.records:
        s = split[r.key]
        if seen.setdefault(r.group, s) != s:
            raise DataError(f"{where}: patient {r.group.split(':', 1)[1]} is in both {seen[r.group]} and {s}")


def subset(dataset: Dataset, split: dict, name: str) -> Dataset:
    if name not in SPLITS:
        raise DataError(f"unknown split {name!r} (use {'/'.join(SPLITS)})")
    records = [r for r in dataset.records if split[r.key] == name]
    return Dataset(records=records, classes=dataset.classes, source=dataset.source)


def thin_validation(dataset: Dataset, split: dict, minimum: int = MIN_VAL_PER_CLASS) -> str | None:
    """A warning when a class has so few validation images that what is chosen on them is a guess."""
    counts = Counter(r.label for r in dataset.records if split[r.key] == "val")
    thin = [f"{c} {counts[c]}" for c in dataset.classes if counts[c] < minimum]
    if not thin:
        return None
    return (
        f"warning: validation holds under {minimum} images of some classes ({', '.join(thin)}): the best epoch, "
        "the decision rule and the screening threshold are chosen on them, so expect noisy choices and wide "
        "intervals (more images, or a larger --val-fraction)"
    )


def split_counts(dataset: Dataset, split: dict) -> str:
    rows = []
    for name in SPLITS:
        part = [r for r in dataset.records if split[r.key] == name]
        counts = Counter(r.label for r in part)
        per_class = ", ".join(f"{c} {counts[c]}" for c in dataset.classes)
        rows.append(f"  {name:>5}: {len(part)} images, {len({r.group for r in part})} patients ({per_class})")
    return "\n".join(rows)
