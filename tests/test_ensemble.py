"""`eyescreen ensemble`: trained models averaged into one checkpoint that every command takes."""

import csv

import numpy as np
import pytest
import torch

from eyescreen.checkpoint import CheckpointError, load_model
from eyescreen.cli import main
from eyescreen.config import preset
from eyescreen.ensemble import build_ensemble
from eyescreen.explain import compute_cams
from eyescreen.inference import predict_proba
from eyescreen.service import Screener
from eyescreen.train import train


def _config(**changes):
    return preset(
        "quick", model="tiny-cnn", image_size=40, epochs=1, batch_size=8, precision="fp32", **changes
    )


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two runs of one recipe with other seeds on the same split, and one on another split."""
    from synthetic import write_dataset

    root = tmp_path_factory.mktemp("ensemble")
    manifest = write_dataset(root / "data", patients=30)
    first = train(_config(seed=0), manifest, root / "a", progress=False)
    second = train(_config(seed=1), manifest, root / "b", split_file=root / "a" / "split.csv", progress=False)
    other_split = train(_config(seed=2), manifest, root / "c", progress=False)
    return first, second, other_split


def _probabilities(folder):
    with open(folder / "predictions.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    return {r["image"]: np.array([float(v) for k, v in r.items() if k.startswith("prob_")]) for r in rows}


def test_the_ensemble_averages_its_members_probabilities(runs, tmp_path, capsys):
    first, second, _ = runs
    out = tmp_path / "ens"
    assert main(["ensemble", str(first), str(second), "--out", str(out), "--no-progress"]) == 0
    printed, err = capsys.readouterr()
    assert "%|" not in err  # no progress bar with --no-progress
    assert (
        f"ensemble of 2 models: {out / 'best.safetensors'}" in printed
        and "calibrated on validation" in printed
    )
    _, meta = load_model(out / "best.safetensors")
    assert meta["model"]["name"] == "ensemble" and "temperature" in meta["calibration"]
    assert set(meta["val_metrics"]) == {"accuracy", "balanced_accuracy", "macro_auc"}

    # evaluate takes it as one model; its probabilities are the members' averaged, eye by eye
    evaluations = {}
    for name, checkpoint in (("a", first), ("b", second), ("ens", out / "best.safetensors")):
        evaluations[name] = tmp_path / f"eval-{name}"
        args = [
            "evaluate",
            "--checkpoint",
            str(checkpoint),
            "--subset",
            "test",
            "--out",
            str(evaluations[name]),
        ]
        assert main(args + ["--no-progress", "--bootstrap", "20"]) == 0
    report = (evaluations["ens"] / "report.md").read_text()
    assert "(an ensemble of 2: tiny-cnn, tiny-cnn; `eyescreen info` describes each)" in report
    a, b, ens = (_probabilities(evaluations[k]) for k in ("a", "b", "ens"))
    assert set(ens) == set(a) and len(ens) > 0
    assert max(np.abs(a[i] - b[i]).max() for i in a) > 0.01  # two different models, so averaging shows
    for image, prob in ens.items():  # softmax of the mean logits: the normalised geometric mean
        mean = np.sqrt(a[image] * b[image])
        np.testing.assert_allclose(prob, mean / mean.sum(), atol=1e-5)

    assert main(["info", str(out / "best.safetensors")]) == 0
    card = capsys.readouterr().out
    assert "model: ensemble of 2 (tiny-cnn, tiny-cnn), class scores averaged" in card
    assert f"member 1: {first} " in card and f"member 2: {second} " in card and "seed=1" in card
    assert "validation of the ensemble (per eye)" in card and "made with: eyescreen " in card
    # the web page names it the same way, not by the bare word "ensemble"
    assert (
        Screener(out / "best.safetensors", workers=1).describe()["model"]
        == "ensemble of 2 (tiny-cnn, tiny-cnn)"
    )


def test_an_ensemble_of_one_model_twice_explains_as_that_model(runs):
    first, _, _ = runs
    single, meta = load_model(first)
    twice, _ = build_ensemble([first, first])
    images = torch.randint(0, 255, (3, 3, 40, 40), dtype=torch.uint8)
    norm = meta["normalization"]
    np.testing.assert_allclose(
        predict_proba(twice, images, norm["mean"], norm["std"], "cpu"),
        predict_proba(single, images, norm["mean"], norm["std"], "cpu"),
        atol=1e-6,
    )
    targets = [0, 1, 2]
    maps = compute_cams(twice, images, norm["mean"], norm["std"], "gradcam", targets)
    np.testing.assert_allclose(maps, compute_cams(single, images, norm["mean"], norm["std"], "gradcam", targets),
                               atol=1e-5)  # fmt: skip
    assert all(not m._forward_hooks and not m._backward_hooks for m in twice.modules())


def test_the_sanity_check_randomises_an_ensembles_members_block_by_block(runs):
    from eyescreen.ensemble import Ensemble
    from eyescreen.faithfulness import randomisation_check

    first, _, _ = runs
    single, meta = load_model(first)
    twice, _ = build_ensemble([first, first])
    before = [p.detach().clone() for p in twice.parameters()]
    images = torch.randint(0, 255, (4, 3, 40, 40), dtype=torch.uint8)
    norm = meta["normalization"]
    rows = randomisation_check(twice, images, norm["mean"], norm["std"], "gradcam", targets=[0, 1, 2, 0])
    alone = randomisation_check(single, images, norm["mean"], norm["std"], "gradcam", targets=[0, 1, 2, 0])
    assert [r["randomised_down_to"] for r in rows] == [r["randomised_down_to"] for r in alone]
    assert len(rows) > 1 and rows[-1]["spearman"] < 0.5
    assert all(torch.equal(a, b) for a, b in zip(before, twice.parameters(), strict=True))
    # members of other shapes have no common blocks: randomised at once
    mixed = Ensemble(3, [{"name": "tiny-cnn", "args": {}}, {"name": "resnet18", "args": {}}])
    one = randomisation_check(mixed, images, norm["mean"], norm["std"], "gradcam", targets=[0, 1, 2, 0])
    assert [r["randomised_down_to"] for r in one] == ["members"]


def test_members_of_another_split_a_single_model_or_copies_are_refused(runs, tmp_path, capsys):
    first, _, other_split = runs
    with pytest.raises(
        CheckpointError, match=rf"{other_split}: its train/val/test split .* differ from those of"
    ):
        build_ensemble([first, other_split])
    with pytest.raises(ValueError, match="at least two checkpoints"):
        build_ensemble([first])
    assert main(["ensemble", str(first), str(other_split), "--out", str(tmp_path / "x")]) == 2
    assert "its train/val/test split" in capsys.readouterr().err
    assert main(["ensemble", str(first), str(first), "--out", str(tmp_path / "x")]) == 2
    assert f"{first}: the same weights as {first} (given twice, or a copy)" in capsys.readouterr().err
    assert not (tmp_path / "x" / "best.safetensors").exists()


def test_an_ensemble_is_made_not_trained(tmp_path, capsys):
    from synthetic import write_dataset

    manifest = write_dataset(tmp_path / "data", patients=12)
    args = ["train", "--data", str(manifest), "--out", str(tmp_path / "run"), "--preset", "quick"]
    assert main(args + ["--model", "ensemble", "--image-size", "40", "--no-progress"]) == 2
    assert "an ensemble is not trained: `eyescreen ensemble RUN_A/best.safetensors" in capsys.readouterr().err


def test_an_ensemble_whose_training_data_moved_is_saved_uncalibrated_and_says_so(runs, tmp_path, capsys):
    import shutil

    from eyescreen.checkpoint import read_meta

    first, second, _ = runs
    data = first.parent.parent / "data"
    moved = data.with_name("data-moved")
    shutil.move(data, moved)
    try:
        assert main(["ensemble", str(first), str(second), "--out", str(tmp_path / "ens")]) == 2
    finally:
        shutil.move(moved, data)
    err = capsys.readouterr().err
    path = tmp_path / "ens" / "best.safetensors"
    assert str(data / "manifest.csv") in err and f"the ensemble is saved, uncalibrated: {path}" in err
    assert "calibration" not in read_meta(path) and read_meta(path)["model"]["name"] == "ensemble"


def test_the_ensembles_map_is_the_mean_of_its_members_maps(runs):
    first, second, _ = runs
    members = [load_model(path)[0] for path in (first, second)]
    both, meta = build_ensemble([first, second])
    norm, targets = meta["normalization"], [0, 1, 2, 0]
    images = torch.randint(0, 255, (4, 3, 40, 40), dtype=torch.uint8)
    own = [compute_cams(m, images, norm["mean"], norm["std"], "gradcam", targets) for m in members]
    assert np.abs(own[0] - own[1]).max() > 0.1  # the members look at different places
    mean = (own[0] + own[1]) / 2
    low, high = mean.min(axis=(1, 2), keepdims=True), mean.max(axis=(1, 2), keepdims=True)
    expected = (mean - low) / (high - low)  # rescaled to [0, 1], as one model's map is
    got = compute_cams(both, images, norm["mean"], norm["std"], "gradcam", targets)
    np.testing.assert_allclose(got, expected, atol=1e-5)
    # no target given: the class the ensemble names, for every member
    named = list(predict_proba(both, images, norm["mean"], norm["std"], "cpu").argmax(1))
    np.testing.assert_allclose(
        compute_cams(both, images, norm["mean"], norm["std"], "gradcam"),
        compute_cams(both, images, norm["mean"], norm["std"], "gradcam", named),
    )


def test_an_ensemble_exports_to_onnx_as_it_predicts(runs, tmp_path):
    import onnxruntime as ort

    first, second, _ = runs
    assert main(["ensemble", str(first), str(second), "--out", str(tmp_path / "ens"), "--no-calibrate"]) == 0
    assert main(["export", "--checkpoint", str(tmp_path / "ens"), "--out", str(tmp_path / "ens.onnx")]) == 0
    x = torch.randn((4, 3, 40, 40), generator=torch.Generator().manual_seed(0))
    (onnx_prob,) = ort.InferenceSession(str(tmp_path / "ens.onnx")).run(None, {"image": x.numpy()})
    model, _ = load_model(tmp_path / "ens" / "best.safetensors")
    with torch.no_grad():
        np.testing.assert_allclose(onnx_prob, torch.softmax(model(x), 1).numpy(), atol=1e-4)
