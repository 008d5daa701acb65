"""Fellow-eye evidence: each eye blended with the other eye of its patient, weight chosen on validation."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from eyescreen.checkpoint import load_model, save_model
from eyescreen.config import preset
from eyescreen.data import Record
from eyescreen.evaluate import evaluate
from eyescreen.fellow import WEIGHTS, blend, choose_weight, fellow_of
from eyescreen.predict_pairs import predict_pairs
from eyescreen.train import train


def record(key, group, eye, label="normal"):
    return Record(path=Path("/x") / key, key=key, label=label, group=group, eye=eye)


def test_the_fellow_is_the_other_side_of_the_same_patient_from_any_manifest_row():
    manifest = [
        record("1_r", "patient:1", "right"),
        record("1_l", "patient:1", "left", label=None),  # no class of its own: its image still counts
        record("2_r", "patient:2", "right"),
        record("3_r", "patient:3", "right"),
        record("3_l_a", "patient:3", "left"),
        record("3_l_b", "patient:3", "left"),  # two left photographs: which one is the fellow is unknown
        record("solo", "image:solo", None),
    ]
    labelled = [manifest[0], manifest[2], manifest[3], manifest[4], manifest[6]]
    fellows = fellow_of(labelled, manifest)
    assert [f.key if f else None for f in fellows] == ["1_l", None, None, "3_r", None]


def test_blend_moves_an_eye_towards_its_fellow_and_leaves_lone_eyes_alone():
    prob = np.array([[0.8, 0.2], [0.6, 0.4]])
    fellow = np.array([[0.2, 0.8], [0.1, 0.9]])
    has = np.array([True, False])
    assert np.array_equal(blend(prob, fellow, has, 0.0), prob)
    half = blend(prob, fellow, has, 0.5)
    np.testing.assert_allclose(half[0], [0.5, 0.5])  # geometric mean of mirror-image distributions
    np.testing.assert_allclose(half[1], prob[1])  # no fellow: unchanged
    some = blend(prob, fellow, has, 0.25)
    assert 0.5 < some[0, 0] < 0.8 and np.isclose(some[0].sum(), 1)


def test_the_weight_is_chosen_by_validation_macro_auc():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 300)
    eye_signal = np.eye(3)[y] * 1.0 + rng.normal(0, 1.0, (300, 3))
    softmax = lambda z: np.exp(z) / np.exp(z).sum(1, keepdims=True)  # noqa: E731
    prob = softmax(eye_signal)
    has = np.ones(300, dtype=bool)
    informative = softmax(np.eye(3)[y] * 1.0 + rng.normal(0, 1.0, (300, 3)))  # a second, independent look
    fit = choose_weight(prob, informative, has, y, ["a", "b", "c"])
    assert fit["weight"] in WEIGHTS and fit["weight"] >= 0.3
    assert fit["val_macro_auc"] > fit["val_macro_auc_alone"] and fit["eyes_with_fellow"] == 300
    noise = softmax(rng.normal(0, 1.0, (300, 3)))
    assert choose_weight(prob, noise, has, y, ["a", "b", "c"])["weight"] <= 0.1


@pytest.fixture(scope="module")
def trained(synthetic_manifest, tmp_path_factory):
    """A tiny model trained on the synthetic manifest, whose two eyes of a patient share the class."""
    cfg = preset("quick", model="tiny-cnn", image_size=48, epochs=2, batch_size=8, lr=3e-3, precision="fp32")
    return train(cfg, synthetic_manifest, tmp_path_factory.mktemp("fellow") / "run", progress=False)


def with_fellow_weight(checkpoint: Path, weight: float, out: Path) -> Path:
    model, meta = load_model(checkpoint)
    meta["calibration"]["fellow_eye"] |= {"weight": weight}
    save_model(out, model, meta)
    return out


def read_rows(path):
    with open(path, newline="") as f:
        return {r["image"]: r for r in csv.DictReader(f)}


def test_training_stores_the_fellow_weight_fitted_on_validation(trained):
    _, meta = load_model(trained)
    fit = meta["calibration"]["fellow_eye"]
    assert fit["weight"] in WEIGHTS and fit["fitted_on"] == "val"
    assert fit["eyes_with_fellow"] == fit["eyes"] > 0  # every synthetic eye has its fellow in the manifest


def test_training_hands_calibration_each_validation_eye_with_its_own_probabilities(
    synthetic_manifest, tmp_path, monkeypatch
):
    import eyescreen.train as module

    seen = {}
    real = module.calibrate_on_validation

    def spy(checkpoint, val, normal_class):
        seen.update(val)
        return real(checkpoint, val, normal_class)

    monkeypatch.setattr(module, "calibrate_on_validation", spy)
    cfg = preset("quick", model="tiny-cnn", image_size=48, epochs=1, batch_size=8, precision="fp32")
    best = train(cfg, synthetic_manifest, tmp_path / "run", progress=False)
    classes = load_model(best)[1]["classes"]
    records = seen["records"]
    fresh, ok = seen["predict"]([r.path for r in records])
    assert len(ok) == len(records) == len(seen["prob"]) > 0
    np.testing.assert_allclose(fresh, seen["prob"], atol=1e-5)  # row i is the eye of records[i]
    assert list(seen["y"]) == [classes.index(r.label) for r in records]


def test_training_fits_what_calibrating_the_checkpoint_again_fits(trained, tmp_path):
    """Training reuses its own validation probabilities; `eyescreen calibrate` predicts them afresh."""
    from eyescreen.calibrate_checkpoint import calibrate_from_split

    copy = tmp_path / "copy.safetensors"
    copy.write_bytes(trained.read_bytes())
    again = calibrate_from_split(copy)
    _, meta = load_model(trained)
    first = meta["calibration"]
    assert again["temperature"] == pytest.approx(first["temperature"], rel=1e-3)
    assert again["referable"]["threshold"] == pytest.approx(first["referable"]["threshold"], abs=1e-4)
    for key in ("weight", "eyes", "eyes_with_fellow"):
        assert again["fellow_eye"][key] == first["fellow_eye"][key]
    assert again["fellow_eye"]["val_macro_auc"] == pytest.approx(
        first["fellow_eye"]["val_macro_auc"], abs=1e-4
    )


def test_evaluate_reports_each_eye_alone_and_blended_with_its_fellow(trained, tmp_path):
    checkpoint = with_fellow_weight(trained, 0.5, tmp_path / "half.safetensors")
    report = evaluate(checkpoint, tmp_path / "eval", split_name="all", progress=False, n_resamples=20)
    block = report["with_fellow_eye"]
    assert "[fellow-eye/report.md](fellow-eye/report.md)" in (tmp_path / "eval" / "report.md").read_text()
    assert "weight 0.50" in (tmp_path / "eval" / "fellow-eye" / "report.md").read_text()
    assert block["weight"] == 0.5 and block["eyes_with_fellow"] == report["metrics"]["n"]
    alone = read_rows(tmp_path / "eval" / "predictions.csv")
    blended = read_rows(tmp_path / "eval" / "fellow-eye" / "predictions.csv")
    probs = [c for c in next(iter(alone.values())) if c.startswith("prob_")]
    right, left = "images/3_right.jpg", "images/3_left.jpg"
    p = np.array([[float(alone[k][c]) for c in probs] for k in (right, left)])
    expected = blend(p[:1], p[1:], np.array([True]), 0.5)[0]
    np.testing.assert_allclose([float(blended[right][c]) for c in probs], expected, atol=2e-6)
    # an even blend gives both eyes of a patient the same probabilities
    np.testing.assert_allclose(
        [float(blended[right][c]) for c in probs], [float(blended[left][c]) for c in probs], atol=2e-6
    )
    unblended = evaluate(with_fellow_weight(trained, 0.0, tmp_path / "none.safetensors"), tmp_path / "e0",
                         split_name="all", progress=False, n_resamples=20)  # fmt: skip
    assert "with_fellow_eye" not in unblended
    assert "fellow" not in (tmp_path / "e0" / "report.md").read_text()


def test_predict_pairs_blends_each_eye_with_its_fellow(trained, synthetic_manifest, tmp_path):
    folder = synthetic_manifest.parent / "images"
    rows = {}
    for weight in (0.0, 0.5):
        checkpoint = with_fellow_weight(trained, weight, tmp_path / f"w{weight}.safetensors")
        out = tmp_path / f"pairs-{weight}.csv"
        predict_pairs([folder], checkpoint, out, progress=False)
        with open(out, newline="") as f:
            rows[weight] = {r["patient"]: r for r in csv.DictReader(f)}
    _, meta = load_model(trained)
    right = [f"right_prob_{c}" for c in meta["classes"]]
    left = [f"left_prob_{c}" for c in meta["classes"]]
    eyes = {w: np.array([[float(r[c]) for c in right + left] for r in rows[w].values()]) for w in rows}
    n = len(right)
    assert not np.allclose(eyes[0.0][:, :n], eyes[0.0][:, n:])  # alone, the two eyes differ
    np.testing.assert_allclose(eyes[0.5][:, :n], eyes[0.5][:, n:], atol=2e-6)  # an even blend: the same


def test_the_web_service_blends_two_eyes_and_leaves_one_eye_alone(trained, tmp_path):
    from importlib import resources

    from eyescreen.service import Screener, Upload

    images = resources.files("eyescreen") / "sample" / "images"
    right = Upload("right", "r.jpg", (images / "1111_right.jpg").read_bytes())
    left = Upload("left", "l.jpg", (images / "1111_left.jpg").read_bytes())
    results = {}
    for weight in (0.0, 0.5):
        screener = Screener(
            with_fellow_weight(trained, weight, tmp_path / f"s{weight}.safetensors"), device="cpu"
        )
        assert screener.describe()["fellow_eye_weight"] == weight
        results[weight] = (screener.screen([right, left]), screener.screen([right]))
    both_alone, one_alone = results[0.0]
    both_blended, one_blended = results[0.5]
    probs = lambda r, side: list(r["eyes"][side]["probabilities"].values())  # noqa: E731
    assert probs(both_alone, "right") != pytest.approx(probs(both_alone, "left"), abs=1e-4)
    assert probs(both_blended, "right") == pytest.approx(probs(both_blended, "left"), abs=1e-6)
    assert probs(one_blended, "right") == pytest.approx(probs(one_alone, "right"), abs=1e-6)  # no fellow sent


def test_class_folders_find_each_eyes_fellow_by_file_name_in_any_class_folder(tmp_path):
    from eyescreen.data import load_dataset
    from eyescreen.fellow import fellow_probabilities

    for label, stems in {
        "normal": ["7_left", "8_right", "scan"],
        "dr": ["7_right", "8_left", "9_left"],
    }.items():
        (tmp_path / label).mkdir()
        for stem in stems:
            (tmp_path / label / f"{stem}.jpg").write_bytes(b"")
    records = [r for r in load_dataset(tmp_path).records if r.label == "normal"]  # their fellows are in dr/
    prob = np.tile([[0.9, 0.1]], (len(records), 1))
    asked = []

    def predict(paths):  # the fellows outside the scored records are predicted on demand
        asked.extend(Path(p).name for p in paths)
        return np.array([[0.3, 0.7]] * len(paths)), list(range(len(paths)))

    fellow_prob, has = fellow_probabilities(predict, records, prob, tmp_path)
    by_name = {r.path.name: i for i, r in enumerate(records)}
    assert sorted(asked) == ["7_right.jpg", "8_left.jpg"]
    assert has[by_name["7_left.jpg"]] and has[by_name["8_right.jpg"]] and not has[by_name["scan.jpg"]]
    np.testing.assert_allclose(fellow_prob[by_name["7_left.jpg"]], [0.3, 0.7])
