"""One photograph or one eye under two patient ids (a file exported again, a follow-up visit registered as a
new patient): found (near_duplicates, same_eye), kept in one split by `train`, named by `check-data`."""

import csv
import json
import shutil
from collections import Counter
from itertools import pairwise
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter

from eyescreen import components, same_eye
from eyescreen.check import check_data
from eyescreen.checkpoint import load_state, read_meta
from eyescreen.config import preset
from eyescreen.data import keep_linked_together, load_dataset, make_split, write_split
from eyescreen.evaluate import evaluate
from eyescreen.held_out_links import patient_units, person_units, recorded_links, seen_elsewhere
from eyescreen.metrics import classification_metrics
from eyescreen.model_card import card_lines, describe_checkpoint
from eyescreen.photo_links import linked
from eyescreen.train import train
from file_reads import counting_reads
from synthetic import veined_fundus
from test_pipeline import tiny_config

LINKED = [{"patient:0", "patient:5", "patient:100"}, {"patient:200", "patient:201"}]


def photographed_again(im: Image.Image) -> Image.Image:
    """The same eye at another visit: turned, shifted, darker, another JPEG."""
    again = im.rotate(6, resample=Image.Resampling.BICUBIC, translate=(4, -3))
    return ImageEnhance.Brightness(again).enhance(0.75)


def manifest_with_links(root):
    """30 patients with two eyes each, every eye its own vessels, and: patient 100, whose left eye is patient
    0's left exported as PNG and whose right eye is a byte copy of patient 5's right (patients 0, 100 and 5
    share photographs); patient 201, whose left eye is patient 200's photographed again."""
    (root / "images").mkdir(parents=True)
    rows = []
    for p in range(30):
        for side in ("left", "right"):
            veined_fundus(2 * p + (side == "right")).save(root / f"images/{p}_{side}.jpg", quality=92)
            rows.append([f"images/{p}_{side}.jpg", p, side, ("normal", "spots", "blob")[p % 3]])
    Image.open(root / "images/0_left.jpg").save(root / "images/100_left.png")
    shutil.copyfile(root / "images/5_right.jpg", root / "images/100_right.jpg")
    veined_fundus(1000).save(root / "images/200_left.jpg", quality=92)
    photographed_again(veined_fundus(1000)).save(root / "images/201_left.jpg", quality=80)
    rows += [["images/100_left.png", 100, "left", "normal"], ["images/100_right.jpg", 100, "right", "blob"],
             ["images/200_left.jpg", 200, "left", "spots"], ["images/201_left.jpg", 201, "left", "spots"]]  # fmt: skip
    manifest = root / "manifest.csv"
    with open(manifest, "w", newline="") as f:
        csv.writer(f).writerows([["image", "patient_id", "eye", "label"], *rows])
    return manifest


def test_an_eye_photographed_again_is_found_and_other_eyes_or_a_reflection_alone_are_not(tmp_path):
    paths = []
    for seed in range(40):
        paths.append(tmp_path / f"{seed}.jpg")
        veined_fundus(seed).save(paths[-1], quality=92)
    paths.append(tmp_path / "again.jpg")
    photographed_again(veined_fundus(3)).save(paths[-1], quality=80)
    for name, darker in (("glare_a.jpg", 0), ("glare_b.jpg", 25)):  # two eyes without detail, one reflection
        im = Image.new("RGB", (128, 128))
        draw = ImageDraw.Draw(im)
        draw.ellipse((6, 6, 122, 122), fill=(200 - darker, 140 - darker, 90))
        draw.ellipse((55, 45, 65, 53), fill=(250, 250, 245))
        paths.append(tmp_path / name)
        im.filter(ImageFilter.GaussianBlur(1.0)).save(paths[-1], quality=90)
    found = same_eye.same_eye_pairs(paths)
    assert [(i, j) for i, j, _ in found] == [(3, 40)] and found[0][2] >= same_eye.LIMIT
    images, _ = same_eye.descriptors(paths[-2:])
    assert same_eye.similarity(*images) >= same_eye.LIMIT  # alike to the comparison: their reflection
    assert (same_eye.detail(images) < same_eye.MIN_DETAIL).all()  # but too little detail to compare


def test_an_eye_photographed_again_closer_is_found(tmp_path):
    """Another framing: 10% closer and turned. Searched at its original scale alone it scores under the
    limit; the zooms tried at the best turn find it."""
    paths = []
    for seed in range(40):
        paths.append(tmp_path / f"{seed}.jpg")
        veined_fundus(seed).save(paths[-1], quality=92)
    im = veined_fundus(3)
    closer = im.resize((round(im.width * 1.1),) * 2, Image.Resampling.BICUBIC)
    framed = Image.new("RGB", im.size)
    framed.paste(closer, ((im.width - closer.width) // 2,) * 2)
    paths.append(tmp_path / "closer.jpg")
    framed.rotate(5, resample=Image.Resampling.BICUBIC, translate=(3, -2)).save(paths[-1], quality=85)
    found = same_eye.same_eye_pairs(paths)
    assert [(i, j) for i, j, _ in found] == [(3, 40)]
    images, _ = same_eye.descriptors([paths[3], paths[40]])
    assert max(same_eye._match(*images, angle) for angle in range(-8, 9, 2)) < same_eye.LIMIT


def test_two_dull_eyes_cut_short_in_the_same_place_are_not_taken_for_one(tmp_path):
    """Two eyes without vessels whose fields of view are cut short alike (an eyelid, a dark corner): their
    descriptors match by the edge of the cut alone, which is not detail to compare by."""
    paths = []
    for k, darker in enumerate((0, 20)):
        im = Image.new("RGB", (128, 128))
        draw = ImageDraw.Draw(im)
        draw.ellipse((6, 6, 122, 122), fill=(170 - darker, 100 - darker, 60))
        draw.polygon([(6, 20), (60, 30), (45, 60), (70, 90), (30, 122), (6, 122)], fill=(0, 0, 0))
        draw.ellipse((95, 55, 107, 67), fill=(230, 200, 140))
        paths.append(tmp_path / f"cut_{k}.jpg")
        im.filter(ImageFilter.GaussianBlur(1.0)).save(paths[-1], quality=90)
    images, _ = same_eye.descriptors(paths)
    assert same_eye.similarity(*images) >= same_eye.LIMIT  # alike to the comparison: the cut
    assert (same_eye.detail(images) < same_eye.MIN_DETAIL).all()
    assert same_eye.same_eye_pairs(paths) == []


FRACTIONS = dict(val_fraction=0.3, test_fraction=0.3)  # small held-out parts would rarely part them


def linked_keys(split, meta, part):
    """The keys of `part` in a recorded link with a key of another split, counted by hand."""
    return {k for group in meta["linked_photographs"] for k in group
            if split[k] == part and any(split[o] != part for o in group)}  # fmt: skip


def held_out_of_the_pair(split):
    """Of the eye photographed twice (patients 200 and 201), the photograph held out, and its twin."""
    eye, twin = ("images/201_left.jpg", "images/200_left.jpg")
    return (twin, eye) if split[eye] == "train" else (eye, twin)


def a_seed_that_parts_them(dataset):
    for seed in range(50):
        split = make_split(dataset, seed=seed, **FRACTIONS)
        if all(
            len({split[r.key] for r in dataset.records if r.group in together}) > 1 for together in LINKED
        ):
            return seed, split
    raise AssertionError("no seed in 50 splits both sets of linked patients apart")


def test_linked_patients_go_to_one_split_and_nothing_else_moves(tmp_path):
    dataset = load_dataset(manifest_with_links(tmp_path))
    links = linked([r.path for r in dataset.records])
    assert sorted(sorted(dataset.records[k].key for k in group) for group in links) == [
        ["images/0_left.jpg", "images/100_left.png"],
        ["images/100_right.jpg", "images/5_right.jpg"],
        ["images/200_left.jpg", "images/201_left.jpg"],
    ]
    _, split = a_seed_that_parts_them(dataset)
    kept, sets = keep_linked_together(dataset, split, links)
    order = ("train", "val", "test")
    first = [min((split[r.key] for r in dataset.records if r.group in together), key=order.index)
             for together in LINKED]  # fmt: skip
    assert sets == [
        (["patient:0", "patient:5", "patient:100"], first[0]),
        (["patient:200", "patient:201"], first[1]),
    ]
    for r in dataset.records:
        where = next(
            (f for together, f in zip(LINKED, first, strict=True) if r.group in together), split[r.key]
        )
        assert kept[r.key] == where
    assert keep_linked_together(dataset, split, []) == (split, [])


def test_the_split_links_read_each_file_once_and_find_what_both_searches_find_alone(tmp_path, monkeypatch):
    from eyescreen import photo_links
    from eyescreen.near_duplicates import copies_among

    dataset = load_dataset(manifest_with_links(tmp_path))
    broken = tmp_path / "images/broken.jpg"
    broken.write_bytes(b"\xff\xd8 not a photograph")
    paths = [r.path for r in dataset.records] + [broken]
    sides = [r.eye for r in dataset.records] + ["left"]
    with monkeypatch.context() as counting:
        reads = counting_reads(counting, photo_links)
        links = linked(paths, sides=sides)
    assert sorted(reads) == sorted(map(str, paths))  # once each: thumbnails and descriptors share it
    apart = [(a, b, 0.0) for group in copies_among(paths) for a, b in pairwise(group)]
    apart += same_eye.same_eye_pairs(paths, sides=sides)
    assert links == components.groups(len(paths), apart)
    broken_index = len(paths) - 1  # left out: whoever reads it next names it
    assert len(links) == 3 and all(broken_index not in group for group in links)


def test_train_keeps_them_together_and_warns_of_a_given_split_that_parts_them(tmp_path, capsys):
    manifest = manifest_with_links(tmp_path / "data")
    dataset = load_dataset(manifest)
    seed, parted = a_seed_that_parts_them(dataset)
    train(tiny_config(epochs=1, seed=seed, **FRACTIONS), manifest, tmp_path / "run", progress=False)
    out = capsys.readouterr().out
    assert (
        "one photograph or eye under several patient ids (2), each set of patients kept in one split: 0 and 5 and 100 ("
        in out
    )
    with open(tmp_path / "run" / "split.csv", newline="") as f:
        written = {row["image"]: row["split"] for row in csv.DictReader(f)}
    for together in LINKED:
        assert len({written[r.key] for r in dataset.records if r.group in together}) == 1
    lines = card_lines(describe_checkpoint(tmp_path / "run" / "best.safetensors"))
    assert "  3 set(s) of photographs of one eye under several patient ids, each within one split" in lines

    write_split(parted, dataset, tmp_path / "parted.csv")
    train(tiny_config(epochs=1, seed=seed, **FRACTIONS), manifest, tmp_path / "given", split_file=tmp_path / "parted.csv",
          progress=False)  # fmt: skip
    out = capsys.readouterr().out
    warning = next(line for line in out.splitlines() if "puts one photograph" in line)
    assert warning.startswith(f"warning: {tmp_path / 'parted.csv'} puts one photograph or eye in two splits under "
                              "different patients (")  # fmt: skip
    assert f"images/200_left.jpg ({parted['images/200_left.jpg']}) = images/201_left.jpg (" in warning
    with open(tmp_path / "given" / "split.csv", newline="") as f:
        assert {row["image"]: row["split"] for row in csv.DictReader(f)} == parted  # used as given

    # the links travel in the checkpoint (and the resume state), and evaluate names the held-out eye whose twin
    # is in another split, and scores the split without it
    meta = read_meta(tmp_path / "given" / "best.safetensors")
    assert ["images/200_left.jpg", "images/201_left.jpg"] in meta["linked_photographs"]
    assert (
        json.loads(load_state(tmp_path / "given" / "resume.pt")["meta"])["links"]
        == meta["linked_photographs"]
    )
    eye, twin = held_out_of_the_pair(parted)
    result = evaluate(tmp_path / "given" / "best.safetensors", tmp_path / "eval", split_name=parted[eye],
                      n_resamples=20, progress=False)  # fmt: skip
    linked = result["linked_elsewhere"]
    assert linked["eyes"][eye] == [f"{twin} ({parted[twin]})"]
    with open(tmp_path / "eval" / "predictions.csv", newline="") as f:
        rows = [row for row in csv.DictReader(f) if row["image"] not in linked["eyes"]]
    classes = result["classes"]
    again = classification_metrics(np.array([classes.index(r["true"]) for r in rows]),
                                   np.array([[float(r[f"prob_{c}"]) for c in classes] for r in rows]), classes)  # fmt: skip
    assert linked["without_them"]["n"] == len(rows) == result["metrics"]["n"] - len(linked["eyes"])
    assert abs(linked["without_them"]["macro_auc"] - again["macro_auc"]) < 2e-3  # predictions.csv: 6 decimals
    assert any(
        note.startswith(f"{len(linked['eyes'])} eye(s) of this split are photographs")
        for note in result["notes"]
    )
    apart = {part: len(linked_keys(parted, meta, part)) for part in ("val", "test")}
    assert apart[parted[eye]] >= len(linked["eyes"]) >= 1
    caution = f"  caution: {apart['val']} validation and {apart['test']} test images are photographs of eyes"
    lines = card_lines(describe_checkpoint(tmp_path / "given" / "best.safetensors"))
    assert any(line.startswith(caution) for line in lines)

    report = check_data(manifest, split_file=tmp_path / "parted.csv", progress=False)
    (pair,) = report["same_eye_two_patients"]  # the copies are reported as copies, not here
    assert pair[:2] == ["images/200_left.jpg (patient:200)", "images/201_left.jpg (patient:201)"]
    assert pair[2].startswith("alike 0.9")
    assert report["same_eye_across_splits"] == [
        [
            f"images/200_left.jpg ({parted['images/200_left.jpg']})",
            f"images/201_left.jpg ({parted['images/201_left.jpg']})",
        ]
    ]


def test_held_out_eyes_with_a_twin_elsewhere_and_linked_patients_as_one_bootstrap_unit():
    split = {"a": "train", "b": "test", "c": "test", "d": "test", "e": "val", "f": "test"}
    links = [["a", "b"], ["c", "d"], ["e", "f", "x"]]  # x: not in this split (a class left out)
    keys = ["b", "c", "d", "f"]
    assert seen_elsewhere(keys, split, links, "test") == {"b": ["a (train)"], "f": ["e (val)"]}
    assert seen_elsewhere(keys, split, [["c", "d"]], "test") == {}
    # c and d are two patients' photographs of one eye: one unit; b's twin is not among these eyes
    units = person_units(keys, ["p1", "p2", "p3", "p4"], links)
    assert list(units) == ["p1", "p2", "p2", "p4"]
    assert list(person_units(keys, ["p1", "p2", "p3", "p4"], [])) == ["p1", "p2", "p3", "p4"]


def test_linked_patients_are_one_unit_in_the_reports_per_patient_too(tmp_path, monkeypatch):
    import eyescreen.evaluate as module

    # pure: a patient takes its eyes' unit; one without a scored eye is its own
    units = patient_units(["p1", "p2", "p3", "p9"], ["p1", "p2", "p3", "p3"], ["p1", "p1", "p3", "p3"])
    assert list(units) == ["p1", "p1", "p3", "p9"]

    manifest = manifest_with_links(tmp_path / "data")
    dataset = load_dataset(manifest)
    links = linked([r.path for r in dataset.records])
    seed, held = next((seed, kept[r.key]) for seed in range(50)
                      for kept in [keep_linked_together(dataset, make_split(dataset, seed=seed, **FRACTIONS), links)[0]]
                      for r in dataset.records if r.group == "patient:100" and kept[r.key] != "train")  # fmt: skip
    best = train(tiny_config(epochs=1, seed=seed, **FRACTIONS), manifest, tmp_path / "run", progress=False)
    seen = []
    real = module.bootstrap_ci
    monkeypatch.setattr(
        module,
        "bootstrap_ci",
        lambda y, prob, units, **kw: seen.append(list(units)) or real(y, prob, units, **kw),
    )
    report = evaluate(best, tmp_path / "eval", split_name=held, n_resamples=20, progress=False)
    assert "patient_level" in report
    patients = json.loads((tmp_path / "eval" / "patients" / "report.json").read_text())
    with open(tmp_path / "eval" / "patients" / "predictions.csv", newline="") as f:
        names = [row["patient"] for row in csv.DictReader(f)]
    per_patient = next(units for units in seen if len(units) == patients["metrics"]["n"] == len(names))
    unit = dict(zip(names, per_patient, strict=True))
    assert unit["0"] == unit["5"] == unit["100"]  # one person registered three times: resampled as one
    assert len(set(per_patient)) == len(names) - 2


def test_the_checkpoint_keeps_links_of_one_person_not_a_shared_artefact():
    from eyescreen.data import Record

    records = [
        Record(Path(f"images/{k}.jpg"), f"images/{k}.jpg", "normal", f"patient:{k}") for k in range(12)
    ]
    links = [[0, 1], list(range(2, 12))]  # one pair, and ten patients alike
    assert recorded_links(records, links, max_patients=6) == [["images/0.jpg", "images/1.jpg"]]
    # a chain of pairs, each of two patients, joining ten: the split leaves it too (keep_linked_together)
    chain = [[k, k + 1] for k in range(2, 11)]
    assert recorded_links(records, [[0, 1], *chain], max_patients=6) == [["images/0.jpg", "images/1.jpg"]]
    assert len(recorded_links(records, chain[:4], max_patients=6)) == 4  # five patients: one person, maybe


def test_a_both_eye_model_names_them_per_eye(tmp_path):
    manifest = manifest_with_links(tmp_path / "data")
    dataset = load_dataset(manifest)
    _, parted = a_seed_that_parts_them(dataset)
    write_split(parted, dataset, tmp_path / "parted.csv")
    cfg = preset("quick", model="tiny-cnn-binocular", image_size=40, epochs=1, batch_size=4, precision="fp32")
    best = train(cfg, manifest, tmp_path / "run", split_file=tmp_path / "parted.csv", progress=False)
    eye, twin = held_out_of_the_pair(parted)
    report = evaluate(best, tmp_path / "eval", split_name=parted[eye], n_resamples=20, progress=False)
    assert report["level"] == "patient"
    assert report["linked_elsewhere"]["eyes"][eye] == [f"{twin} ({parted[twin]})"]
    per_eye = json.loads((tmp_path / "eval" / "eyes" / "report.json").read_text())
    assert per_eye["linked_elsewhere"] == report["linked_elsewhere"]
    assert per_eye["linked_elsewhere"]["without_them"]["n"] == per_eye["metrics"]["n"] - len(
        report["linked_elsewhere"]["eyes"]
    )
    assert any(note.startswith("per eye: ") and eye in note for note in report["notes"])


def test_the_candidate_search_in_chunks_changes_nothing_and_unreadable_files_keep_the_indices(
    tmp_path, monkeypatch
):
    paths = []
    for seed in range(23):
        paths.append(tmp_path / f"{seed}.jpg")
        veined_fundus(seed).save(paths[-1], quality=92)
    paths.insert(5, tmp_path / "missing.jpg")  # unreadable: left out, the indices still point into `paths`
    whole, ok = same_eye.descriptors(paths)
    pairs = same_eye.candidates(whole)
    monkeypatch.setattr(same_eye, "CHUNK", 3)
    chunked, chunked_ok = same_eye.descriptors(paths)
    assert ok == chunked_ok == [k for k in range(24) if k != 5]
    assert (chunked == whole).all() and same_eye.candidates(chunked) == pairs
    per_photograph = Counter(k for pair in pairs for k in pair)
    assert sorted(per_photograph) == list(range(23))  # every photograph with its nearest in each view
    assert min(per_photograph.values()) >= same_eye.NEIGHBOURS


def test_a_set_of_more_patients_than_one_person_could_be_is_left_where_the_split_put_it(tmp_path, capsys):
    from eyescreen.data import MAX_LINKED
    from synthetic import write_dataset

    dataset = load_dataset(write_dataset(tmp_path, patients=30))
    left_eyes = [k for k, r in enumerate(dataset.records) if r.eye == "left"]
    chain = [left_eyes[: MAX_LINKED + 2]]  # 8 patients alike: a shared artefact, not one person
    pair = [[left_eyes[20], left_eyes[25]]]
    split = make_split(dataset, seed=1, **FRACTIONS)
    kept, sets = keep_linked_together(dataset, split, chain + pair)
    big = {dataset.records[k].group for k in chain[0]}
    assert sets[0] == ([dataset.records[k].group for k in chain[0]], None)
    assert all(kept[r.key] == split[r.key] for r in dataset.records if r.group in big)
    assert len({kept[dataset.records[k].key] for k in pair[0]}) == 1 and sets[1][1] is not None


def test_train_warns_of_a_set_too_large_to_be_one_person_and_leaves_it(tmp_path, monkeypatch, capsys):
    import eyescreen.train as module
    from eyescreen.data import MAX_LINKED
    from synthetic import write_dataset

    manifest = write_dataset(tmp_path / "data", patients=30)
    dataset = load_dataset(manifest)
    chain = [k for k, r in enumerate(dataset.records) if r.eye == "left"][: MAX_LINKED + 2]
    monkeypatch.setattr(module, "linked_photographs", lambda *args, **kwargs: [chain])  # a shared artefact
    train(tiny_config(epochs=1, seed=1, **FRACTIONS), manifest, tmp_path / "run", progress=False)
    out = capsys.readouterr().out
    assert (
        f"warning: 1 set(s) of more than {MAX_LINKED} patients linked by photographs alike (the largest: 8)"
        in out
    )
    assert "kept in one split" not in out
    with open(tmp_path / "run" / "split.csv", newline="") as f:
        written = {row["image"]: row["split"] for row in csv.DictReader(f)}
    assert written == make_split(dataset, seed=1, **FRACTIONS)  # as make_split put them
