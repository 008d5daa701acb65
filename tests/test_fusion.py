import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from eyescreen.fusion import LEFT, POOLINGS, RIGHT, Binocular
from interrupt import interrupted_after_saves


def model(pooling, backbone="tiny-cnn"):
    torch.manual_seed(0)
    return Binocular(backbone, num_classes=3, pooling=pooling).eval()


@pytest.mark.parametrize("pooling", POOLINGS)
def test_an_absent_eye_has_no_influence(pooling):
    m = model(pooling)
    x = torch.randn(3, 2, 3, 32, 32)
    mask = torch.tensor([[True, False], [False, True], [True, True]])
    _, patient = m(x, mask)
    noisy = x.clone()
    noisy[0, LEFT] = torch.randn(3, 32, 32) * 50
    noisy[1, RIGHT] = 0
    eyes2, patient2 = m(noisy, mask)
    assert torch.allclose(patient, patient2, atol=1e-6)
    assert torch.isfinite(patient2).all()
    # per-eye logits depend on that eye alone, whatever the batch holds
    assert torch.allclose(eyes2[2], m(x[2:3])[0][0], atol=1e-6)


def test_mirroring_makes_a_left_eye_look_like_a_right_eye():
    m = model("mean")
    right = torch.randn(1, 3, 32, 32)
    as_left = right.flip(-1)  # the same retina photographed as a left eye
    eyes, _ = m(torch.stack([right, as_left], dim=1))
    assert torch.allclose(eyes[0, RIGHT], eyes[0, LEFT], atol=1e-5)
    torch.manual_seed(0)
    plain = Binocular("tiny-cnn", num_classes=3, pooling="mean", mirror_left=False).eval()
    eyes, _ = plain(torch.stack([right, right], dim=1))  # unmirrored: the same input, the same logits
    assert torch.allclose(eyes[0, RIGHT], eyes[0, LEFT], atol=1e-5)


@pytest.mark.parametrize("pooling", ["mean", "max", "attention"])
def test_swapping_sides_is_symmetric_for_symmetric_pooling(pooling):
    m = model(pooling)
    x = torch.randn(2, 2, 3, 32, 32)
    swapped = torch.stack([x[:, LEFT].flip(-1), x[:, RIGHT].flip(-1)], dim=1)  # each eye in the other slot
    assert torch.allclose(m(x)[1], m(swapped)[1], atol=1e-5)
    weights = m.eye_weights(x, torch.ones(2, 2, dtype=torch.bool))
    assert torch.allclose(weights.sum(1), torch.ones(2))


def test_concat_keeps_the_sides_apart_and_resnet_backbone_works():
    m = model("concat")
    x = torch.randn(2, 2, 3, 32, 32)
    swapped = torch.stack([x[:, LEFT].flip(-1), x[:, RIGHT].flip(-1)], dim=1)
    assert not torch.allclose(m(x)[1], m(swapped)[1])
    eyes, patient = model("attention", "resnet18")(torch.randn(2, 2, 3, 64, 64))
    assert eyes.shape == (2, 2, 3) and patient.shape == (2, 3)
    with pytest.raises(ValueError, match="at least one eye"):
        m(x, torch.tensor([[True, True], [False, False]]))


def test_both_eye_model_trains_resumes_and_loads(tmp_path, monkeypatch):
    import csv

    from safetensors.torch import load_file

    from eyescreen import train as train_module
    from eyescreen.checkpoint import load_model
    from eyescreen.config import preset
    from eyescreen.train import train
    from synthetic import write_dataset

    manifest = write_dataset(tmp_path / "data", patients=24)
    rows = list(csv.reader(open(manifest)))
    with open(manifest, "w", newline="") as f:  # patient 5 has only a right eye
        csv.writer(f).writerows(r for r in rows if r[0] != "images/5_left.jpg")
    cfg = dict(
        model="tiny-cnn-binocular",
        image_size=40,
        epochs=2,
        batch_size=4,
        precision="fp32",
        pooling="attention",
        mirror_left=False,
    )
    best = train(preset("quick", **cfg), manifest, tmp_path / "full", progress=False)
    model, meta = load_model(best)
    args = {"num_classes": 3, "pooling": "attention", "mirror_left": False}
    assert meta["model"] == {"name": "tiny-cnn-binocular", "args": args}
    assert model.mirror_left is False
    eyes, patient = model(torch.zeros(1, 2, 3, 40, 40), torch.tensor([[True, False]]))
    assert eyes.shape == (1, 2, 3) and patient.shape == (1, 3)

    with interrupted_after_saves(monkeypatch, train_module):
        train(preset("quick", **cfg), manifest, tmp_path / "cut", progress=False)
    train(None, manifest, tmp_path / "cut", resume=True, progress=False)
    a, b = load_file(tmp_path / "full" / "last.safetensors"), load_file(tmp_path / "cut" / "last.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_both_eye_checkpoint_evaluates_per_patient_and_per_eye(tmp_path):
    from eyescreen.compare import compare, read_predictions
    from eyescreen.config import preset
    from eyescreen.evaluate import evaluate
    from eyescreen.train import train
    from synthetic import write_dataset

    manifest = write_dataset(tmp_path / "data", patients=24)
    cfg = preset("quick", model="tiny-cnn-binocular", image_size=40, epochs=1, batch_size=4, precision="fp32")
    best = train(cfg, manifest, tmp_path / "run", progress=False)
    report = evaluate(best, tmp_path / "eval", progress=False, n_resamples=20)
    assert report["level"] == "patient"
    assert report["eye_level"]["metrics"]["n"] == 2 * report["metrics"]["n"]  # both eyes of each test patient
    assert (tmp_path / "eval" / "eyes" / "report.md").is_file()
    assert "per patient" in (tmp_path / "eval" / "report.md").read_text()

    # per eye, its predictions are written as a single-eye model's are, so the two compare eye by eye
    single_cfg = preset("quick", model="tiny-cnn", image_size=40, epochs=1, batch_size=4, precision="fp32")
    single = train(
        single_cfg, manifest, tmp_path / "single", split_file=tmp_path / "run" / "split.csv", progress=False
    )
    evaluate(single, tmp_path / "eval-single", progress=False, n_resamples=20)
    eyes, alone = (read_predictions(tmp_path / d) for d in ("eval/eyes", "eval-single"))
    assert eyes["unit"] == "image" and sorted(eyes["keys"]) == sorted(alone["keys"])
    assert len(eyes["keys"]) == report["eye_level"]["metrics"]["n"]
    assert dict(zip(eyes["keys"], eyes["patients"], strict=True)) == dict(
        zip(alone["keys"], alone["patients"], strict=True)
    )
    np.testing.assert_allclose(eyes["prob"].sum(1), 1.0, atol=1e-4)
    result = compare(tmp_path / "eval-single", tmp_path / "eval" / "eyes", n_resamples=50)
    assert result["unit"] == "image" and result["units"] == len(eyes["keys"]) and result["only_in_one"] == 0
    auc = result["metrics"]["macro_auc"]
    assert auc["b"] == pytest.approx(report["eye_level"]["metrics"]["macro_auc"], abs=1e-6)

    # test-time augmentation: both eyes turned alike, patients and eyes scored as without it
    flipped = evaluate(best, tmp_path / "tta", progress=False, n_resamples=20, tta="flips")
    assert flipped["test_time_augmentation"] == "flips (4 views)"
    assert flipped["metrics"]["n"] == report["metrics"]["n"]
    assert flipped["eye_level"]["metrics"]["n"] == report["eye_level"]["metrics"]["n"]
    assert "flips (4 views)" in (tmp_path / "tta" / "report.md").read_text()


def test_test_time_views_of_both_eyes_average_each_output_apart():
    from eyescreen.inference import ViewAverage

    net = model("attention")
    x = torch.rand(3, 2, 3, 32, 32)
    mask = torch.tensor([[True, True], [True, False], [False, True]])
    with torch.no_grad():
        views = [net(v, mask) for v in (x, x.flip(-1), x.flip(-2), x.flip(-1, -2))]
        eyes, patients = ViewAverage(net)(x, mask)
        torch.testing.assert_close(eyes, torch.stack([v[0] for v in views]).mean(0))
        torch.testing.assert_close(patients, torch.stack([v[1] for v in views]).mean(0))
        # the same patients photographed upside down get the same average
        torch.testing.assert_close(ViewAverage(net)(x.flip(-2), mask)[1], patients, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("model_name", ["tiny-cnn-binocular", "tiny-cnn"])
def test_predict_pairs_writes_one_row_per_patient(tmp_path, model_name):
    from eyescreen.cli import main
    from eyescreen.config import preset
    from eyescreen.train import train
    from synthetic import everyday_photo, fundus, write_dataset

    manifest = write_dataset(tmp_path / "data", patients=24, classes=("normal", "blob"))
    cfg = preset("quick", model=model_name, image_size=40, epochs=1, batch_size=4, precision="fp32")
    best = train(cfg, manifest, tmp_path / "run", progress=False)
    folder = tmp_path / "clinic"
    folder.mkdir()
    for name, lesion in (
        ("A1_left", None),
        ("A1_right", "blob"),
        ("B2-L", None),
        ("B2-R", None),
        ("C3_OD", None),
    ):
        fundus(60, lesion, seed=len(name))[0].save(folder / f"{name}.jpg")
    (folder / "D4_left.jpg").write_bytes(b"broken")
    everyday_photo(folder / "E5_right.jpg")  # predicted all the same, with a warning
    (folder / "notes.jpg").write_bytes(b"x")  # no side in the name
    out = tmp_path / "patients.csv"
    assert (
        main(
            ["predict", str(folder), "--pairs", "--checkpoint", str(best), "--out", str(out), "--no-progress"]
        )
        == 0
    )
    rows = {r["patient"]: r for r in csv.DictReader(open(out))}
    assert set(rows) == {"A1", "B2", "C3", "D4", "E5"}
    assert "E5_right.jpg: may not be a fundus photograph" in rows["E5"]["warning"] and rows["E5"]["predicted"]
    assert rows["A1"]["warning"] == "" and rows["D4"]["warning"] == ""
    assert rows["C3"]["driven_by"] == "right" and rows["C3"]["left_prob_normal"] == ""  # one eye only
    assert rows["A1"]["driven_by"] in ("left", "right") and rows["A1"]["predicted"] in ("normal", "blob")
    assert abs(sum(float(rows["A1"][f"prob_{c}"]) for c in ("blob", "normal")) - 1) < 1e-4
    assert "not a readable image" in rows["D4"]["error"] and rows["D4"]["predicted"] == ""
    assert "notes.jpg" in (tmp_path / "patients.unpaired.txt").read_text()
    assert rows["A1"]["other_files"] == ""


@pytest.mark.parametrize("model_name", ["tiny-cnn-binocular", "tiny-cnn"])
def test_predict_pairs_takes_the_most_diseased_combination_of_several_photographs_of_an_eye(
    tmp_path, model_name, monkeypatch
):
    from eyescreen.config import preset
    from eyescreen.predict_pairs import predict_pairs
    from eyescreen.train import train
    from synthetic import fundus, write_dataset

    manifest = write_dataset(tmp_path / "data", patients=24, classes=("normal", "blob"))
    cfg = preset("quick", model=model_name, image_size=40, epochs=2, batch_size=4, precision="fp32")
    best = train(cfg, manifest, tmp_path / "run", progress=False)
    photos = {name: fundus(60, lesion, seed=seed)[0]
              for name, lesion, seed in (("F6_left_1", None, 1), ("F6_left_2", "blob", 2), ("F6_right", None, 3),
                                         ("F6_right_2", "blob", 4))}  # fmt: skip
    clinic = tmp_path / "clinic"
    clinic.mkdir()
    for name, photo in photos.items():
        photo.save(clinic / f"{name}.png")
    (clinic / "F6_left_3.png").write_bytes(b"broken")  # the others still decide
    out = tmp_path / "patients.csv"
    import eyescreen.predict_pairs as module
    from eyescreen.inference import predict_proba

    shown = []  # the photographs a single-eye model is shown: each once, not once per combination
    with monkeypatch.context() as counting:  # not monkeypatch.undo(): it would undo the isolated cache too
        counting.setattr(module, "predict_proba", lambda model, images, *a: shown.append(len(images)) or
                         predict_proba(model, images, *a))  # fmt: skip
        assert predict_pairs([clinic], best, out, precision="fp32", progress=False)["several"] == 1
    assert shown == ([] if model_name.endswith("binocular") else [4])
    (row,) = list(csv.DictReader(open(out)))
    assert "F6_left_3.png" in row["error"] and "not a readable image" in row["error"] and row["predicted"]

    # each right-left combination alone, as a patient with one photograph per side
    alone = {}
    for right in ("F6_right", "F6_right_2"):
        for left in ("F6_left_1", "F6_left_2"):
            folder = tmp_path / f"{right}-{left}"
            folder.mkdir()
            photos[right].save(folder / "P_right.png")
            photos[left].save(folder / "P_left.png")
            predict_pairs([folder], best, folder / "out.csv", precision="fp32", progress=False)
            (alone[right, left],) = list(csv.DictReader(open(folder / "out.csv")))
    disease = {combo: 1 - float(r["prob_normal"]) for combo, r in alone.items()}
    right, left = max(disease, key=disease.get)
    assert (Path(row["right_file"]).stem, Path(row["left_file"]).stem) == (right, left)
    for column in ("prob_normal", "prob_blob", "left_prob_blob", "right_prob_blob"):
        assert float(row[column]) == pytest.approx(float(alone[right, left][column]), abs=1e-5)
    assert (row["predicted"], row["driven_by"]) == (
        alone[right, left]["predicted"],
        alone[right, left]["driven_by"],
    )
    others = {Path(p).name for p in row["other_files"].split("; ")}
    assert others == {f"{name}.png" for name in photos if name not in (right, left)} | {"F6_left_3.png"}


def test_explain_a_both_eye_checkpoint_side_by_side(tmp_path, capsys, monkeypatch):
    from eyescreen.cli import main
    from eyescreen.config import preset
    from eyescreen.train import train
    from synthetic import everyday_photo, fundus, write_dataset

    manifest = write_dataset(tmp_path / "data", patients=24)
    cfg = preset("quick", model="tiny-cnn-binocular", image_size=40, epochs=1, batch_size=4, precision="fp32")
    best = str(train(cfg, manifest, tmp_path / "run", progress=False))
    assert (
        main(
            [
                "explain",
                "--subset",
                "test",
                "--checkpoint",
                best,
                "--out",
                str(tmp_path / "g"),
                "--no-progress",
            ]
        )
        == 0
    )
    overlays = list((tmp_path / "g" / "overlays").glob("*.png"))
    assert overlays and "<h2>true " in (tmp_path / "g" / "index.html").read_text()  # grouped by patient label
    assert np.load(next((tmp_path / "g" / "maps").glob("*.npy"))).shape == (2, 40, 40)
    folder = tmp_path / "pairs"
    folder.mkdir()
    fundus(60, seed=1)[0].save(folder / "X_left.jpg")
    fundus(60, seed=2)[0].save(folder / "X_right.jpg")
    fundus(60, seed=3)[0].save(folder / "Y_right.jpg")
    everyday_photo(folder / "Y_left.jpg")  # explained with its fellow, and flagged
    fundus(60, seed=4)[0].save(folder / "scan.jpg")  # no side in its name
    for n in (1, 2):  # two photographs of one eye: one map per patient would have to guess between them
        fundus(60, seed=4 + n)[0].save(folder / f"Z_left_{n}.jpg")
    assert (
        main(["explain", str(folder), "--checkpoint", best, "--out", str(tmp_path / "f"), "--no-progress"])
        == 0
    )
    assert {p.name for p in (tmp_path / "f" / "overlays").iterdir()} == {"X.png", "Y.png"}
    warned = {r["name"]: r["warning"] for r in csv.DictReader(open(tmp_path / "f" / "explanations.csv"))}
    assert warned["X"] == "" and "Y_left.jpg: may not be a fundus photograph" in warned["Y"]
    unpaired = (tmp_path / "f" / "unpaired.txt").read_text().splitlines()
    assert sorted(unpaired) == [str(folder / name) for name in ("Z_left_1.jpg", "Z_left_2.jpg", "scan.jpg")]
    assert "not paired (no patient and side" in capsys.readouterr().err
    for name in ("scan.jpg", "Z_left_1.jpg", "Z_left_2.jpg"):
        (folder / name).unlink()
    named = tmp_path / "named"  # a naming scheme of the user's own
    named.mkdir()
    for side, seed in (("R", 7), ("L", 8)):
        fundus(60, seed=seed)[0].save(named / f"eye({side})__77.jpg")
    own = ["--pair-pattern", r"^eye\((?P<side>[LR])\)__(?P<id>\d+)$"]
    assert (
        main(
            ["explain", str(named), "--checkpoint", best, "--out", str(tmp_path / "n"), "--no-progress", *own]
        )
        == 0
    )
    assert [p.name for p in (tmp_path / "n" / "overlays").iterdir()] == ["77.png"]

    # faithfulness and anatomy on the split's patients: curves per patient, shares per eye
    faith = ["explain", "--evaluate", "--subset", "test", "--checkpoint", best, "--methods", "gradcam,eigencam",
             "--out", str(tmp_path / "faith"), "--no-progress"]  # fmt: skip
    assert main(faith) == 0
    rows = json.loads((tmp_path / "faith" / "faithfulness.json").read_text())
    assert [r["method"] for r in rows] == ["gradcam", "eigencam", "random map (baseline)"]
    assert rows[0]["sanity_cascade"][0]["randomised_down_to"] == "head_patient"
    assert all(0 <= r["deletion_auc"] <= 1 and 0 <= r["insertion_auc"] <= 1 for r in rows)
    text = (tmp_path / "faith" / "faithfulness.md").read_text()
    assert "patients," in text and "each eye under its own true class" in text
    anatomy = ["explain", "--anatomy", "--subset", "test", "--checkpoint", best, "--out", str(tmp_path / "anat")]  # fmt: skip
    assert main(anatomy + ["--limit", "2", "--no-progress"]) == 0
    first = (tmp_path / "anat" / "anatomy.md").read_text()
    assert "of 2 patients of the test split" in first
    shares = json.loads((tmp_path / "anat" / "anatomy.json").read_text())
    assert shares and sum(r["n"] for r in shares) <= 4 and all(r["patients"] <= 2 for r in shares)
    assert main(anatomy + ["--limit", "2", "--no-progress"]) == 0
    assert (tmp_path / "anat" / "anatomy.md").read_text() == first  # the same sample on every run
    import eyescreen.explain_cli
    import eyescreen.tasks

    read, load = [], eyescreen.tasks._load
    with monkeypatch.context() as m:
        m.setattr(
            eyescreen.tasks, "_load", lambda paths, *a, **k: read.append(len(paths)) or load(paths, *a, **k)
        )
        assert main(anatomy + ["--limit", "2", "--no-progress"]) == 0
    assert 0 < sum(read) <= 4  # the sample is drawn before any photograph is read: only its own are
    assert main(anatomy + ["--no-progress"]) == 0
    whole = (tmp_path / "anat" / "anatomy.md").read_text()
    with monkeypatch.context() as m:
        m.setattr(eyescreen.explain_cli, "PATIENT_CHUNK", 1)  # one patient read at a time: the same table
        assert main(anatomy + ["--no-progress"]) == 0
    assert (tmp_path / "anat" / "anatomy.md").read_text() == whole and "eyes of " in whole
    # an eye of the split whose side is not known cannot be paired: said in the report, not dropped silently
    rows = [line.split(",") for line in (tmp_path / "run" / "split.csv").read_text().splitlines()[1:]]
    split = {row[0]: row[-1] for row in rows}
    lines = manifest.read_text().splitlines()
    odd = next(i for i, line in enumerate(lines[1:], 1) if split.get(line.split(",")[0]) == "test")
    cells = lines[odd].split(",")
    lines[odd] = ",".join(cells[:2] + [""] + cells[3:])
    manifest.write_text("\n".join(lines) + "\n")
    assert main(anatomy + ["--no-progress"]) == 0
    text = (tmp_path / "anat" / "anatomy.md").read_text()
    assert text.startswith("1 left out:\n") and f"{cells[0]}: not paired (no patient id and side" in text

    # the single-eye commands say so instead of failing inside the model; calibrate works on patients
    assert main(["predict", str(folder), "--checkpoint", best, "--out", str(tmp_path / "p.csv")]) == 2
    assert not (tmp_path / "p.csv").exists()
    from eyescreen.checkpoint import read_meta

    trained = read_meta(best)["calibration"]
    assert main(["calibrate", "--checkpoint", best]) == 0  # re-fitted on the validation patients
    assert read_meta(best)["calibration"]["temperature"] == pytest.approx(trained["temperature"], rel=1e-3)


@pytest.mark.parametrize("model_name", ["tiny-cnn-binocular", "tiny-cnn"])
def test_maps_are_drawn_over_the_photograph_not_the_enhanced_input(tmp_path, monkeypatch, model_name):
    """A clinician reads the photograph; Graham's background subtraction is what the model sees."""
    import eyescreen.explain
    from eyescreen.cli import main
    from eyescreen.config import preset
    from eyescreen.preprocess import Preprocessing, cropped_fundus, preprocess_image
    from eyescreen.train import train
    from synthetic import fundus, write_dataset

    manifest = write_dataset(tmp_path / "data", patients=12)
    cfg = preset(
        "quick", model=model_name, image_size=40, epochs=1, batch_size=4, precision="fp32", enhance="graham"
    )
    best = str(train(cfg, manifest, tmp_path / "run", progress=False))
    folder = tmp_path / "pairs"
    folder.mkdir()
    fundus(60, seed=1)[0].save(folder / "X_left.jpg")
    fundus(60, seed=2)[0].save(folder / "X_right.jpg")
    drawn = []
    monkeypatch.setattr(eyescreen.explain, "save_overlay", lambda images, *a, **k: drawn.append(images))
    assert (
        main(["explain", str(folder), "--checkpoint", best, "--out", str(tmp_path / "f"), "--no-progress"])
        == 0
    )
    pictures = [p for images in drawn for p in (images if isinstance(images, list) else [images])]
    expected = [cropped_fundus(folder / f"X_{side}.jpg", 40) for side in ("right", "left")]
    assert len(pictures) == 2 and all(any(np.array_equal(p, e) for p in pictures) for e in expected)
    enhanced = preprocess_image(folder / "X_right.jpg", Preprocessing(image_size=40, enhance="graham"))
    assert not any(np.array_equal(p, enhanced) for p in pictures)


def test_a_both_eye_models_eyes_are_calibrated_apart_from_its_patients(tmp_path, capsys):
    """The eye head has other priors and another temperature than the patient head: its eyes get their own
    calibration on the validation eyes, used for every per-eye number and decision."""
    import csv

    from eyescreen.checkpoint import load_model, read_meta, save_model
    from eyescreen.cli import main
    from eyescreen.config import preset
    from eyescreen.evaluate import evaluate
    from eyescreen.service import Screener, Upload
    from eyescreen.train import train
    from synthetic import fundus, write_dataset

    manifest = write_dataset(tmp_path / "data", patients=30)
    cfg = preset("quick", model="tiny-cnn-binocular", image_size=40, epochs=1, batch_size=4, precision="fp32")
    best = train(cfg, manifest, tmp_path / "run", progress=False)
    assert "per eye: calibrated on validation: temperature" in capsys.readouterr().out
    meta = read_meta(best)
    eye = meta["calibration"]["eye"]
    assert {"temperature", "decision"} <= set(eye) and eye["temperature"] != meta["calibration"][
        "temperature"
    ]
    assert main(["info", str(best)]) == 0
    assert f"each eye's calibration: temperature {eye['temperature']:.3f}" in capsys.readouterr().out

    report = evaluate(best, tmp_path / "eval", progress=False, n_resamples=20)
    eyes = json.loads((tmp_path / "eval" / "eyes" / "report.json").read_text())
    assert eyes["calibration"]["temperature"] == eye["temperature"]
    assert report["calibration"]["temperature"] == meta["calibration"]["temperature"]

    # A rule that names one class for every eye, and a temperature that flattens each eye's probabilities:
    # what `serve` and `predict --pairs` show per eye follows them, the patient decision does not.
    model, meta = load_model(best)
    forced = meta["classes"].index("spots")
    weights = [1.0] * len(meta["classes"])
    weights[forced] = 1e6
    meta["calibration"]["eye"] = {
        "temperature": 1e4,
        "decision": {"prior_power": 1.0, "class_weights": weights, "val_balanced_accuracy": 0.0,
                     "val_balanced_accuracy_argmax": 0.0},
    }  # fmt: skip
    edited = tmp_path / "edited.safetensors"
    save_model(edited, model, meta)
    folder = tmp_path / "clinic"
    folder.mkdir()
    for seed, side in enumerate(("left", "right")):
        fundus(60, "blob", seed=seed)[0].save(folder / f"P_{side}.jpg")
    screener = Screener(edited, workers=1)
    uploads = [
        Upload(side, f"{side}.jpg", (folder / f"P_{side}.jpg").read_bytes()) for side in ("right", "left")
    ]
    result = screener.screen(uploads)
    assert {e["predicted"] for e in result["eyes"].values()} == {"spots"}
    patient = result["patient"]["probabilities"]
    assert max(patient.values()) - min(patient.values()) > 1e-3  # the patient's own temperature
    for entry in result["eyes"].values():
        assert max(entry["probabilities"].values()) - min(entry["probabilities"].values()) < 1e-3
    out = tmp_path / "pairs.csv"
    assert main(["predict", str(folder), "--pairs", "--checkpoint", str(edited), "--out", str(out)]) == 0
    (row,) = csv.DictReader(open(out))
    assert float(row["right_prob_spots"]) == pytest.approx(1 / 3, abs=1e-3)
    assert row["predicted"] == result["patient"]["predicted"]
