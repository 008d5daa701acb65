"""An ensemble of both-eye models: one checkpoint that every command treats as a both-eye model."""

import csv

import numpy as np
import onnxruntime as ort
import pytest
import torch

from eyescreen.checkpoint import CheckpointError, load_model, read_meta, save_model
from eyescreen.cli import main
from eyescreen.config import preset
from eyescreen.ensemble import build_ensemble
from eyescreen.explain import compute_pair_cams
from eyescreen.service import Screener, Upload
from eyescreen.train import train


def _config(model="tiny-cnn-binocular", **changes):
    return preset("quick", model=model, image_size=40, epochs=1, batch_size=4, precision="fp32", **changes)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two both-eye runs with other seeds on one split, and a single-eye run on that split."""
    from synthetic import write_dataset

    root = tmp_path_factory.mktemp("both-eye-ensemble")
    manifest = write_dataset(root / "data", patients=24)
    first = train(_config(seed=0), manifest, root / "a", progress=False)
    split = root / "a" / "split.csv"
    second = train(_config(seed=1), manifest, root / "b", split_file=split, progress=False)
    single = train(_config(model="tiny-cnn", seed=2), manifest, root / "c", split_file=split, progress=False)
    return first, second, single


def _eyes(seed=0, patients=3):
    """Random both-eye inputs, normalised, with patient 0's left eye absent."""
    x = torch.randn((patients, 2, 3, 40, 40), generator=torch.Generator().manual_seed(seed))
    mask = torch.ones((patients, 2), dtype=torch.bool)
    mask[0, 1] = False
    return x, mask


def test_the_ensemble_averages_patient_and_eye_logits_apart(runs):
    first, second, _ = runs
    ens, meta = build_ensemble([first, second])
    assert meta["model"]["name"] == "ensemble"
    x, mask = _eyes()
    members = [load_model(p)[0] for p in (first, second)]
    with torch.no_grad():
        eye_logits, patient_logits = ens(x, mask)
        outputs = [m(x, mask) for m in members]
        weights = ens.eye_weights(x, mask)
    assert not torch.allclose(outputs[0][1], outputs[1][1])  # two different models, so averaging shows
    torch.testing.assert_close(eye_logits, (outputs[0][0] + outputs[1][0]) / 2)
    torch.testing.assert_close(patient_logits, (outputs[0][1] + outputs[1][1]) / 2)
    with torch.no_grad():
        torch.testing.assert_close(
            weights, (members[0].eye_weights(x, mask) + members[1].eye_weights(x, mask)) / 2
        )
    assert weights[0, 1] == 0 and weights[0, 0] == pytest.approx(1.0)  # the absent eye weighs nothing


def test_a_both_eye_ensemble_is_calibrated_evaluated_and_predicted_per_patient(runs, tmp_path, capsys):
    from synthetic import fundus

    first, second, _ = runs
    out = tmp_path / "ens"
    assert main(["ensemble", str(first), str(second), "--out", str(out), "--no-progress"]) == 0
    assert "calibrated on validation" in capsys.readouterr().out
    path = out / "best.safetensors"
    meta = read_meta(path)
    assert "temperature" in meta["calibration"] and "fellow_eye" not in meta["calibration"]  # per patient

    assert (
        main(
            ["evaluate", "--checkpoint", str(path), "--subset", "test", "--no-progress", "--bootstrap", "20"]
        )
        == 0
    )
    assert "per patient" in (out / "eval-test" / "report.md").read_text()
    assert (out / "eval-test" / "eyes" / "report.md").is_file()  # and per eye, as a both-eye model's

    capsys.readouterr()
    assert main(["info", str(path)]) == 0
    assert (
        "ensemble of 2 (tiny-cnn-binocular, tiny-cnn-binocular), class scores averaged (both eyes per patient)"
        in capsys.readouterr().out
    )

    folder = tmp_path / "clinic"
    folder.mkdir()
    for seed, name in enumerate(("P1_left", "P1_right", "P2_right")):
        fundus(60, seed=seed)[0].save(folder / f"{name}.jpg")
    table = tmp_path / "patients.csv"
    assert (
        main(
            [
                "predict",
                str(folder),
                "--pairs",
                "--checkpoint",
                str(path),
                "--out",
                str(table),
                "--no-progress",
            ]
        )
        == 0
    )
    rows = {r["patient"]: r for r in csv.DictReader(open(table))}
    assert (
        set(rows) == {"P1", "P2"}
        and rows["P2"]["driven_by"] == "right"
        and rows["P2"]["left_prob_normal"] == ""
    )
    assert rows["P1"]["predicted"] in meta["classes"]
    # the web service screens a patient with it, maps of the patient decision on each eye
    screener = Screener(path, workers=1)
    assert screener.describe()["both_eye_model"] is True
    uploads = [
        Upload(side, f"{side}.jpg", (folder / f"P1_{side}.jpg").read_bytes()) for side in ("right", "left")
    ]
    result = screener.screen(uploads, explain=True)
    assert result["patient"]["predicted"] in meta["classes"]
    assert {e["explained_class"] for e in result["eyes"].values()} == {result["patient"]["predicted"]}
    assert all(e["overlay_png"] for e in result["eyes"].values())
    # one eye at a time is refused with what to do instead, as for one both-eye model
    assert main(["predict", str(folder), "--checkpoint", str(path), "--out", str(tmp_path / "p.csv")]) == 2
    assert "--pairs" in capsys.readouterr().err


def test_a_both_eye_ensembles_maps_are_its_members_maps_averaged(runs, tmp_path):
    first, second, _ = runs
    single, meta = load_model(first)
    twice, _ = build_ensemble([first, first])
    both, _ = build_ensemble([first, second])
    norm = meta["normalization"]
    images = torch.randint(0, 255, (3, 2, 3, 40, 40), dtype=torch.uint8)
    mask = torch.ones((3, 2), dtype=torch.bool)
    mask[1, 0] = False
    targets = [0, 1, 2]
    # a model twice explains as that model
    np.testing.assert_allclose(
        compute_pair_cams(twice, images, mask, norm["mean"], norm["std"], "gradcam", targets),
        compute_pair_cams(single, images, mask, norm["mean"], norm["std"], "gradcam", targets),
        atol=1e-5,
    )
    maps = compute_pair_cams(both, images, mask, norm["mean"], norm["std"], "gradcam", targets)
    assert maps.shape == (3, 2, 40, 40) and not maps[1, 0].any()  # an absent eye has no map
    assert maps[mask.numpy()].max(axis=(1, 2)) == pytest.approx(1.0, abs=1e-5)  # each eye rescaled
    assert all(not m._forward_hooks and not m._backward_hooks for m in both.modules())

    out = tmp_path / "g"
    path = tmp_path / "ens"
    assert main(["ensemble", str(first), str(second), "--out", str(path), "--no-calibrate"]) == 0
    args = ["explain", "--subset", "test", "--checkpoint", str(path), "--out", str(out), "--no-progress"]
    assert main(args) == 0
    assert np.load(next((out / "maps").glob("*.npy"))).shape == (2, 40, 40)


def test_a_both_eye_ensemble_exports_to_onnx_as_it_predicts(runs, tmp_path):
    first, second, _ = runs
    path = tmp_path / "ens"
    assert main(["ensemble", str(first), str(second), "--out", str(path), "--no-calibrate"]) == 0
    onnx_path = tmp_path / "ens.onnx"
    assert main(["export", "--checkpoint", str(path), "--out", str(onnx_path)]) == 0
    x, mask = _eyes(seed=3)
    session = ort.InferenceSession(str(onnx_path))
    patient, eyes = session.run(None, {"images": x.numpy(), "present": mask.float().numpy()})
    model, _ = load_model(path / "best.safetensors")
    with torch.no_grad():
        eye_logits, patient_logits = model(x, mask)
    np.testing.assert_allclose(patient, torch.softmax(patient_logits, -1).numpy(), atol=1e-4)
    present = mask.numpy()
    np.testing.assert_allclose(eyes[present], torch.softmax(eye_logits, -1).numpy()[present], atol=1e-4)


def test_members_of_both_kinds_or_other_patient_labels_are_refused(runs, tmp_path, capsys):
    first, second, single = runs
    with pytest.raises(CheckpointError, match=rf"{single}: a single-eye model, {first} a both-eye model"):
        build_ensemble([first, single])
    model, meta = load_model(second)
    meta["config"]["two_diseases"] = "priority"
    relabelled = tmp_path / "relabelled.safetensors"
    save_model(relabelled, model, meta)
    with pytest.raises(
        CheckpointError, match=r"its two_diseases \('priority'\) differs .* a patient's label"
    ):
        build_ensemble([first, relabelled])
    assert main(["ensemble", str(first), str(second), "--out", str(tmp_path / "ens"), "--no-calibrate"]) == 0
    capsys.readouterr()
    assert main(["ensemble", str(tmp_path / "ens"), str(first), "--out", str(tmp_path / "x")]) == 2
    assert "an ensemble already; give its members instead" in capsys.readouterr().err
