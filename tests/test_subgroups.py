"""`evaluate --by COLUMN`: the eyes (or a both-eye model's patients) of each subgroup scored apart."""

import csv

import numpy as np
import pytest

from eyescreen.cli import main
from eyescreen.config import preset
from eyescreen.metrics import headline_metrics
from eyescreen.subgroups import patient_cells, subgroup_labels
from eyescreen.train import train


def test_a_numeric_column_is_cut_at_its_quartiles_and_empty_cells_are_unknown():
    labels, order = subgroup_labels(["30", "40", "50", "60", "70", "80", "", "NaN"], "age")
    assert order == ["age ≤ 42.5", "42.5 < age ≤ 55", "55 < age ≤ 67.5", "age > 67.5", "unknown"]
    assert labels == [order[0], order[0], order[1], order[2], order[3], order[3], "unknown", "unknown"]


def test_a_text_column_keeps_its_values_in_alphabetical_order():
    labels, order = subgroup_labels(["male", "female", "", "female"], "sex")
    assert labels == ["male", "female", "unknown", "female"] and order == ["female", "male", "unknown"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    from synthetic import write_dataset

    root = tmp_path_factory.mktemp("subgroups")
    manifest = write_dataset(root / "data", patients=30)
    with open(manifest, newline="") as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        p = int(r["patient_id"])
        r["sex"], r["age"] = ("female", "male")[p % 2], str(30 + 2 * p)
    with open(manifest, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    cfg = preset("quick", model="tiny-cnn", image_size=40, epochs=1, batch_size=8, precision="fp32")
    train(cfg, manifest, root / "run", progress=False)
    return root / "run" / "best.safetensors", manifest


def test_each_subgroup_is_scored_on_its_own_eyes(run, tmp_path, capsys):
    checkpoint, manifest = run
    out = tmp_path / "eval"
    args = ["evaluate", "--checkpoint", str(checkpoint), "--subset", "all", "--by", "sex", "--out", str(out)]
    assert main(args + ["--no-progress", "--bootstrap", "200"]) == 0
    printed = capsys.readouterr().out
    assert "per subgroup of 'sex'" in printed and "| female | " in printed and "| male | " in printed

    import json

    report = json.loads((out / "report.json").read_text())
    rows = {row["subgroup"]: row for row in report["subgroups"]["rows"]}
    assert list(rows) == ["all eyes", "female", "male"]
    assert rows["all eyes"]["eyes"] == rows["female"]["eyes"] + rows["male"]["eyes"] == 60
    assert rows["all eyes"]["macro_auc"] == pytest.approx(report["metrics"]["macro_auc"])
    # each subgroup's macro-AUC is that of its own eyes' predictions, as predictions.csv has them
    sex = {r["image"]: r["sex"] for r in csv.DictReader(open(manifest, newline=""))}
    classes = report["classes"]
    predictions = list(csv.DictReader(open(out / "predictions.csv", newline="")))
    for name in ("female", "male"):
        mine = [p for p in predictions if sex[p["image"]] == name]
        y = np.array([classes.index(p["true"]) for p in mine])
        prob = np.array([[float(p[f"prob_{c}"]) for c in classes] for p in mine])
        assert rows[name]["eyes"] == len(mine) == 30 and rows[name]["patients"] == 15
        # predictions.csv holds probabilities to 6 decimals: a near-tie there may rank two eyes otherwise
        assert rows[name]["macro_auc"] == pytest.approx(headline_metrics(y, prob)["macro_auc"], abs=2e-3)
        others = [
            p for p in predictions if sex[p["image"]] != name
        ]  # scored on another group's eyes: differs
        y_other = np.array([classes.index(p["true"]) for p in others])
        prob_other = np.array([[float(p[f"prob_{c}"]) for c in classes] for p in others])
        assert abs(rows[name]["macro_auc"] - headline_metrics(y_other, prob_other)["macro_auc"]) > 2e-3
        lo, hi = rows[name]["macro_auc_ci"]
        assert lo <= hi
    markdown, page = (out / "report.md").read_text(), (out / "report.html").read_text()
    assert "## Per subgroup of `sex`" in markdown and "| female | 30 (15) |" in markdown
    assert '<a href="subgroups-sex.csv">' in page and "<td>female</td>" in page
    with open(out / "subgroups-sex.csv", newline="") as f:
        assert [r["sex"] for r in csv.DictReader(f)] == ["all eyes", "female", "male"]

    assert (
        main(
            args[:-2] + ["--by", "age", "--out", str(tmp_path / "age"), "--no-progress", "--bootstrap", "50"]
        )
        == 0
    )
    bands = [
        row["subgroup"]
        for row in json.loads((tmp_path / "age" / "report.json").read_text())["subgroups"]["rows"]
    ]
    assert len(bands) == 5 and bands[1].startswith("age ≤ ") and bands[-1].startswith("age > ")


def test_by_a_column_the_manifest_lacks_is_refused_before_any_image_is_read(run, capsys):
    checkpoint, manifest = run
    assert main(["evaluate", "--checkpoint", str(checkpoint), "--by", "camera", "--no-progress"]) == 2
    assert f"{manifest}: no column 'camera' for --by; found " in capsys.readouterr().err


def test_a_patients_cell_comes_from_its_eyes():
    from eyescreen.data import Record

    eyes = [("1", "female"), ("1", ""), ("2", "61"), ("2", "63"), ("3", "canon"), ("3", "topcon"), ("4", "")]
    records = [
        Record(path=None, key=f"{p}-{i}", label="normal", group=f"patient:{p}")
        for i, (p, _) in enumerate(eyes)
    ]
    cells = {r.key: cell for r, (_, cell) in zip(records, eyes, strict=True)}
    assert patient_cells(records, cells) == {
        "patient:1": "female",  # an empty cell defers to the other eye's
        "patient:2": "62",  # numbers that differ: their mean
        "patient:3": "canon + topcon",  # words that differ: a subgroup of their own
        "patient:4": "",  # unknown
    }


def test_a_both_eye_model_is_scored_per_patient_in_each_subgroup(run, tmp_path, capsys):
    import json

    _, manifest = run
    cfg = preset("quick", model="tiny-cnn-binocular", image_size=40, epochs=1, batch_size=8, precision="fp32")
    train(cfg, manifest, tmp_path / "both", progress=False)
    out = tmp_path / "eval"
    args = ["evaluate", "--checkpoint", str(tmp_path / "both" / "best.safetensors"), "--subset", "all"]
    assert main(args + ["--by", "sex", "--out", str(out), "--no-progress", "--bootstrap", "50"]) == 0
    assert "per subgroup of 'sex' (patients of the all split)" in capsys.readouterr().out
    report = json.loads((out / "report.json").read_text())
    rows = {row["subgroup"]: row for row in report["subgroups"]["rows"]}
    assert list(rows) == ["all patients", "female", "male"]
    assert rows["female"]["patients"] == rows["male"]["patients"] == 15 and "eyes" not in rows["female"]
    sex = {r["patient_id"]: r["sex"] for r in csv.DictReader(open(manifest, newline=""))}
    classes = report["classes"]
    predictions = list(csv.DictReader(open(out / "predictions.csv", newline="")))
    for name in ("female", "male"):
        mine = [p for p in predictions if sex[p["patient_id"].split(":")[-1]] == name]
        y = np.array([classes.index(p["true"]) for p in mine])
        prob = np.array([[float(p[f"prob_{c}"]) for c in classes] for p in mine])
        assert rows[name]["macro_auc"] == pytest.approx(headline_metrics(y, prob)["macro_auc"])
    assert "| female | 15 |" in (out / "report.md").read_text()
    with open(out / "subgroups-sex.csv", newline="") as f:
        assert next(csv.reader(f))[:2] == ["sex", "patients"]


def test_by_needs_a_manifest(run, tmp_path, capsys):
    import shutil

    checkpoint, manifest = run
    folder = tmp_path / "folder"
    for r in list(csv.DictReader(open(manifest, newline="")))[:12]:
        (folder / r["label"]).mkdir(parents=True, exist_ok=True)
        shutil.copy(manifest.parent / r["image"], folder / r["label"])
    args = [
        "evaluate",
        "--checkpoint",
        str(checkpoint),
        "--data",
        str(folder),
        "--subset",
        "all",
        "--by",
        "sex",
    ]
    assert main(args + ["--no-progress"]) == 2
    assert f"{folder}: --by needs a manifest CSV with a 'sex' column, not a folder" in capsys.readouterr().err
