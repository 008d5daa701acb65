"""`eyescreen explain`: choose what to explain (files, folders or a split) and how to load it."""

from __future__ import annotations

import dataclasses
import sys
from functools import partial
from pathlib import Path

from tqdm import tqdm

from .batch_output import keep_problems
from .checkpoint import load_model
from .data import Dataset, checkpoint_data, images_given, list_images, load_dataset, subset
from .explain import explain_items
from .inference import resolve_device
from .models import takes_both_eyes
from .preprocess import ImageCache, Preprocessing, cropped_fundus, preprocess_noted


def _named_inputs(inputs: list[str]) -> list[tuple[str, Path, None]]:
    """Files keep their name; files found in a folder are named by their path inside it."""
    items, seen = [], set()
    for given in map(Path, inputs):
        paths = list_images([given])
        for p in paths:
            name = p.relative_to(given).as_posix() if given.is_dir() else p.name
            while name in seen:  # the same name from two inputs: keep both outputs
                name = f"_{name}"
            seen.add(name)
            items.append((name, p, None))
    return items


def run_explain(args) -> dict:
    if bool(args.inputs) == bool(args.subset):
        raise ValueError("give image files/folders or --subset, not both and not neither")
    if args.inputs:
        images_given(args.inputs, say=partial(print, file=sys.stderr))
    model, meta = load_model(args.checkpoint, resolve_device(args.device))
    prep = Preprocessing(**meta["preprocessing"])
    if takes_both_eyes(meta["model"]):
        return _explain_binocular(args, model, meta, prep)
    if args.subset:
        dataset = load_dataset(checkpoint_data(meta, args.data), meta["classes"])
        part = subset(dataset, meta["split"], args.subset)
        items = [(r.key, r.path, r.label) for r in part.records]
    else:
        items = _named_inputs(args.inputs)
    load, view = _loaders(args, prep)
    return explain_items(items, model, meta, Path(args.out), load, method=args.method, target=args.target,
                         batch_size=args.batch_size, progress=not args.no_progress, view=view,
                         checkpoint=args.checkpoint, resume=args.resume)  # fmt: skip


def _explain_binocular(args, model, meta, prep) -> dict:
    """Patients from the checkpoint's split (with their patient label) or from paired file names."""
    from .pairs import DEFAULT_PATTERN, pair_files, pair_records, patient_label
    from .tasks import BothEyes

    if args.subset:
        dataset = load_dataset(checkpoint_data(meta, args.data), meta["classes"])
        pairs, apart = pair_records(subset(dataset, meta["split"], args.subset).records)
        unpaired = [r.path for r in apart]
        task = BothEyes.of_checkpoint(meta)  # patients labelled as in training
        items = [(p.patient, (p.right, p.left), patient_label([p.right_label, p.left_label], task.classes,
                                                              task.normal_class, task.two_diseases))
                 for p in pairs]  # fmt: skip
    else:
        pairs, unpaired = pair_files(args.inputs, args.pair_pattern or DEFAULT_PATTERN)
        # one map per patient, of one photograph per side: several of a side are not guessed between
        several = [p for p in pairs if p.several_of_a_side]
        unpaired += [path for p in several for side in ("right", "left") for path in p.photographs(side)]
        items = [(p.patient, (p.right, p.left), None) for p in pairs if not p.several_of_a_side]
    # a few on the console, all in a file: a folder of another naming scheme leaves every file unpaired
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    keep_problems("not paired (no patient and side in its name or record, or a second photograph of one side)",
                  [str(path) for path in unpaired], out / "unpaired.txt")  # fmt: skip
    load, view = _loaders(args, prep)
    return explain_items(items, model, meta, Path(args.out), load, method=args.method, target=args.target,
                         batch_size=min(args.batch_size, 8), progress=not args.no_progress, view=view,
                         checkpoint=args.checkpoint, resume=args.resume)  # fmt: skip


def _loaders(args, prep: Preprocessing):
    """`load(path) -> (image, warnings)`, the model's input, and `view(path)`, the picture its map is drawn
    over: the photograph before structure enhancement, which is what a clinician reads (None where the two
    are the same). A split's images come through the cache (`check-data` is where their warnings are);
    files given by name are read as they are, with a note for one that may not be a colour fundus."""
    if args.subset:
        cache = ImageCache(prep, args.cache_dir)

        def load(path):
            return cache.get(path), []

        plain = ImageCache(dataclasses.replace(prep, enhance="none"), args.cache_dir).get
    else:
        load = partial(preprocess_noted, prep=prep)
        plain = partial(cropped_fundus, image_size=prep.image_size)
    return load, (plain if prep.enhance != "none" else None)


def _subset_sample(args, meta, default_limit: int | None) -> list:
    """The records of `--subset`, or a fixed random sample of `--limit` of them (default_limit if unset)."""
    import numpy as np

    dataset = load_dataset(checkpoint_data(meta, args.data), meta["classes"])
    records = subset(dataset, meta["split"], args.subset).records
    limit = args.limit if args.limit is not None else default_limit
    if limit is not None and limit < len(records):
        rng = np.random.default_rng(0)  # the same sample on every run
        records = [records[i] for i in sorted(rng.permutation(len(records))[:limit])]
    return records


def _eye_shares(model, meta, paths, images, cache, args, mask=None) -> list:
    """CAM mass on disc, macula and the rest for each eye, map for the predicted class. With `mask`,
    `images` are a both-eye model's patients, the map is for the patient's decision, and `paths` are the
    present eyes' files in order."""
    import numpy as np

    from .anatomy import eye_shares
    from .faithfulness import explanation_maps, predicted_classes

    norm = meta["normalization"]
    targets = predicted_classes(model, images, norm["mean"], norm["std"], mask)
    cams = explanation_maps(model, images, norm["mean"], norm["std"], args.method, list(targets), mask,
                            args.batch_size)  # fmt: skip
    if mask is not None:  # the present eyes, in order
        images, cams = images[mask], cams[mask.numpy()]
    arrays = images.permute(0, 2, 3, 1).numpy()
    if cache.prep.enhance != "none":  # landmarks are found on the photograph, not the enhanced input
        plain = ImageCache(dataclasses.replace(cache.prep, enhance="none"), args.cache_dir)
        arrays = np.stack([plain.get(path) for path in paths])
    return eye_shares(arrays, cams)


def _write_shares(per_eye, labels, patients, meta, out: Path, method: str) -> str:
    import json

    from .anatomy import plot_shares, shares_markdown, summarise_shares

    shares = summarise_shares(per_eye, labels, meta["classes"], patients)
    (out / "anatomy.json").write_text(json.dumps(shares, indent=2))
    plot_shares(shares, out / "anatomy.png", method)
    text = shares_markdown(shares, method)
    if takes_both_eyes(meta["model"]):
        text = ("Both-eye model: each eye under its own true class; its map is for the patient's predicted "
                "class.\n" + text)  # fmt: skip
    return text


def _patient_records(args, meta, default_limit: int | None):
    """A both-eye model's patients of `--subset` (or a fixed random sample of `--limit` of them, drawn
    before any photograph is read), as records grouped by patient; and the split's records that cannot be
    paired, as messages for the report's first lines; and the split's part of the data they come from."""
    import numpy as np

    from .pairs import pair_records

    dataset = load_dataset(checkpoint_data(meta, args.data), meta["classes"])
    part = subset(dataset, meta["split"], args.subset)
    pairs, apart = pair_records(part.records)
    unpaired = tuple(f"{r.path}: not paired (no patient id and side, or a second photograph of one side)"
                     for r in apart)  # fmt: skip
    chosen = [f"patient:{p.patient}" for p in pairs]
    limit = args.limit if args.limit is not None else default_limit
    if limit is not None and limit < len(chosen):
        chosen = [chosen[i] for i in sorted(np.random.default_rng(0).permutation(len(chosen))[:limit])]
    by_patient = {group: [] for group in chosen}  # in pair order: sorted by patient
    for r in part.records:
        if r.group in by_patient:
            by_patient[r.group].append(r)
    return list(by_patient.values()), unpaired, part


def _load_patients(meta, part: Dataset, patients: list[list], cache: ImageCache, args, show: bool):
    """Samples of the patients' records, as the both-eye model was trained on them, and the image file of
    each eye key (for the photograph under the map)."""
    from .tasks import BothEyes

    records = [r for group in patients for r in group]
    part = dataclasses.replace(part, records=records)
    samples = BothEyes.of_checkpoint(meta).load(part, cache, args.subset, show, report=False)
    return samples, {r.key: r.path for r in records}


def _pair_shares(model, meta, samples, path_of: dict, cache: ImageCache, args):
    """Disc, macula and rest shares of each present eye's map (for the patient's predicted class), with
    each eye's true class (None: outside the classes) and patient."""
    import numpy as np

    present = samples.mask.numpy()
    keys = np.array(samples.eye_names, dtype=object).reshape(len(samples), 2)[present]
    per_eye = _eye_shares(model, meta, [path_of[k] for k in keys], samples.inputs, cache, args, samples.mask)
    classes = meta["classes"]
    labels = [classes[t] if t >= 0 else None for t in samples.targets[:, :2].numpy()[present]]
    patients = list(np.repeat(np.array(samples.names, dtype=object), 2)[present.ravel()])
    return per_eye, labels, patients


def run_faithfulness(args) -> str:
    """`explain --evaluate --subset S`: the faithfulness table, written as JSON and Markdown."""
    import json

    from .faithfulness import faithfulness_table, table_markdown
    from .preprocess import load_stack

    if not args.subset:
        raise ValueError("--evaluate needs --subset (e.g. --subset test)")
    model, meta = load_model(args.checkpoint, resolve_device(args.device))
    cache = ImageCache(Preprocessing(**meta["preprocessing"]), args.cache_dir)
    norm = meta["normalization"]
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    if takes_both_eyes(meta["model"]):  # patients: about as many eyes as the single-eye default of 200
        patients, unpaired, part = _patient_records(args, meta, default_limit=100)
        samples, path_of = _load_patients(meta, part, patients, cache, args, not args.no_progress)
        rows = faithfulness_table(model, samples.inputs, norm["mean"], norm["std"], methods,
                                  batch_size=args.batch_size, mask=samples.mask, progress=not args.no_progress)  # fmt: skip
        unreadable = [*unpaired, *samples.skipped]
        table = table_markdown(rows, len(samples), meta["model"]["name"], eyes=int(samples.mask.sum()))
        per_eye, labels, patients = _pair_shares(model, meta, samples, path_of, cache, args)
    else:
        records = _subset_sample(args, meta, default_limit=200)
        images, ok, errors = load_stack([r.path for r in records], cache, progress=not args.no_progress)
        records = [records[i] for i in ok]
        rows = faithfulness_table(model, images, norm["mean"], norm["std"], methods, batch_size=args.batch_size,
                                  progress=not args.no_progress)  # fmt: skip
        unreadable = [message for _, message in errors]
        table = table_markdown(rows, len(images), meta["model"]["name"])
        # Where does it look: CAM mass on the optic disc, the macula and the rest, per true class.
        per_eye = _eye_shares(model, meta, [r.path for r in records], images, cache, args)
        labels, patients = [r.label for r in records], [r.group for r in records]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    text = _left_out(unreadable) + table
    (out / "faithfulness.json").write_text(json.dumps(rows, indent=2))
    text += "\n" + _write_shares(per_eye, labels, patients, meta, out, args.method)
    (out / "faithfulness.md").write_text(text)
    return text + f"\nwritten to {out / 'faithfulness.md'} and {out / 'anatomy.png'}"


# `explain --anatomy` reads a split this many eyes (single-eye models) or patients (both-eye models) at a
# time: memory stays flat on large splits
EYE_CHUNK, PATIENT_CHUNK = 128, 64


def run_anatomy(args) -> str:
    """`explain --anatomy --subset S`: where the maps fall (disc, macula, rest) per true class, over every
    eye of the split (or `--limit` of them), with patient-level intervals; no deletion curves, so cheap."""
    from .preprocess import load_stack

    if not args.subset:
        raise ValueError("--anatomy needs --subset (e.g. --subset test)")
    model, meta = load_model(args.checkpoint, resolve_device(args.device))
    cache = ImageCache(Preprocessing(**meta["preprocessing"]), args.cache_dir)
    if takes_both_eyes(meta["model"]):
        return _pair_anatomy(args, model, meta, cache)
    records = _subset_sample(args, meta, default_limit=None)
    kept, per_eye, unreadable = [], [], []
    starts = range(0, len(records), EYE_CHUNK)
    for start in tqdm(starts, desc=f"maps of {len(records)} eyes", unit="chunk", disable=args.no_progress):
        part = records[start : start + EYE_CHUNK]
        images, ok, errors = load_stack([r.path for r in part], cache, progress=False)
        unreadable += [message for _, message in errors]  # each message names its file
        part = [part[i] for i in ok]
        if part:
            kept += part
            per_eye += _eye_shares(model, meta, [r.path for r in part], images, cache, args)
    labels, patients = [r.label for r in kept], [r.group for r in kept]
    return _write_anatomy(args, meta, per_eye, labels, patients, unreadable, f"{len(kept)} eyes")


def _pair_anatomy(args, model, meta, cache: ImageCache) -> str:
    """`explain --anatomy` for a both-eye model: every present eye of the split's patients (or `--limit`
    patients), its map for the patient's decision."""
    patients, unpaired, part = _patient_records(args, meta, default_limit=None)
    per_eye, labels, ids, unreadable, eyes, kept = [], [], [], list(unpaired), 0, 0
    starts = range(0, len(patients), PATIENT_CHUNK)
    for start in tqdm(
        starts, desc=f"maps of {len(patients)} patients", unit="chunk", disable=args.no_progress
    ):
        samples, path_of = _load_patients(
            meta, part, patients[start : start + PATIENT_CHUNK], cache, args, show=False
        )
        unreadable += samples.skipped
        if len(samples):
            shares, classes, who = _pair_shares(model, meta, samples, path_of, cache, args)
            per_eye += shares
            labels += classes
            ids += who
            eyes, kept = eyes + int(samples.mask.sum()), kept + len(samples)
    return _write_anatomy(args, meta, per_eye, labels, ids, unreadable, f"{eyes} eyes of {kept} patients")


def _write_anatomy(args, meta, per_eye, labels, patients, unreadable: list[str], scope: str) -> str:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    located = sum(s is not None for s in per_eye)
    text = _left_out(unreadable) + f"{scope} of the {args.subset} split, landmarks found on {located}.\n\n"
    text += _write_shares(per_eye, labels, patients, meta, out, args.method)
    (out / "anatomy.md").write_text(text)
    return text + f"\nwritten to {out / 'anatomy.md'} and {out / 'anatomy.png'}"


def _left_out(messages: list[str]) -> str:
    """The report's first lines: which files were left out, and why (each message names its file)."""
    return f"{len(messages)} left out:\n" + "\n".join(messages) + "\n\n" if messages else ""
