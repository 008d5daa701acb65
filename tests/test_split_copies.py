"""One photograph under two patient ids: `train` keeps those patients in one split, and says so."""

import csv
import shutil

from PIL import Image

from eyescreen.data import keep_copies_together, load_dataset, make_split, write_split
from eyescreen.near_duplicates import copies_among
from eyescreen.train import train
from synthetic import write_dataset
from test_pipeline import tiny_config

LINKED = {"patient:0", "patient:5", "patient:100"}


def manifest_with_copies(root):
    """30 patients, and patient 100, whose left eye is patient 0's left exported as PNG and whose right eye
    is a byte copy of patient 5's right: patients 0, 100 and 5 share photographs."""
    manifest = write_dataset(root, patients=30)
    Image.open(root / "images/0_left.jpg").save(root / "images/100_left.png")
    shutil.copyfile(root / "images/5_right.jpg", root / "images/100_right.jpg")
    with open(manifest, "a", newline="") as f:
        csv.writer(f).writerows([["images/100_left.png", 100, "left", "normal"],
                                 ["images/100_right.jpg", 100, "right", "blob"]])  # fmt: skip
    return manifest


def a_seed_that_parts_them(dataset):
    for seed in range(50):
        split = make_split(dataset, seed=seed)
        if len({split[r.key] for r in dataset.records if r.group in LINKED}) > 1:
            return seed, split
    raise AssertionError("no seed in 50 splits the linked patients apart")


def test_patients_sharing_a_photograph_go_to_one_split_and_nothing_else_moves(tmp_path):
    dataset = load_dataset(manifest_with_copies(tmp_path))
    copies = copies_among([r.path for r in dataset.records])
    assert sorted(sorted(dataset.records[k].key for k in group) for group in copies) == [
        ["images/0_left.jpg", "images/100_left.png"],
        ["images/100_right.jpg", "images/5_right.jpg"],
    ]
    _, split = a_seed_that_parts_them(dataset)
    kept, linked = keep_copies_together(dataset, split, copies)
    first = min(
        (split[r.key] for r in dataset.records if r.group in LINKED), key=("train", "val", "test").index
    )
    assert linked == [(["patient:0", "patient:5", "patient:100"], first)]  # in the order of the data
    for r in dataset.records:
        assert kept[r.key] == (first if r.group in LINKED else split[r.key])
    assert keep_copies_together(dataset, split, []) == (split, [])


def test_train_keeps_them_together_and_warns_of_a_given_split_that_parts_them(tmp_path, capsys):
    manifest = manifest_with_copies(tmp_path / "data")
    dataset = load_dataset(manifest)
    seed, parted = a_seed_that_parts_them(dataset)
    train(tiny_config(epochs=1, seed=seed), manifest, tmp_path / "run", progress=False)
    out = capsys.readouterr().out
    assert (
        "one photograph under several patient ids (1), each set of patients kept in one split: 0 and 5 and 100"
        in out
    )
    with open(tmp_path / "run" / "split.csv", newline="") as f:
        written = {row["image"]: row["split"] for row in csv.DictReader(f)}
    assert len({written[r.key] for r in dataset.records if r.group in LINKED}) == 1

    write_split(parted, dataset, tmp_path / "parted.csv")
    train(tiny_config(epochs=1, seed=seed), manifest, tmp_path / "given", split_file=tmp_path / "parted.csv",
          progress=False)  # fmt: skip
    out = capsys.readouterr().out
    assert (
        f"warning: {tmp_path / 'parted.csv'} puts one photograph in two splits under different patients"
        in out
    )
    with open(tmp_path / "given" / "split.csv", newline="") as f:
        assert {row["image"]: row["split"] for row in csv.DictReader(f)} == parted  # used as given
