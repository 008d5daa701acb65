"""`eyescreen compare`: the difference between two models on the same patients, with a paired interval."""

import csv
import json

import numpy as np
import pytest

from eyescreen.cli import main
from eyescreen.compare import compare
from eyescreen.data import DataError
from eyescreen.metrics import headline_metrics

CLASSES = ["normal", "dr", "amd"]


def write_predictions(path, y, prob, keys=None, classes=CLASSES):
    path.mkdir(parents=True, exist_ok=True)
    keys = keys or [f"images/{i // 2}_{('left', 'right')[i % 2]}.jpg" for i in range(len(y))]
    with open(path / "predictions.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image", "patient", "true", "predicted"] + [f"prob_{c}" for c in classes])
        for key, t, p in zip(keys, y, prob, strict=True):
            w.writerow([key, f"patient:{key.split('/')[1].split('_')[0]}", classes[t], classes[int(np.argmax(p))]]
                       + [f"{v:.6f}" for v in p])  # fmt: skip
    return path


@pytest.fixture
def two_models(tmp_path):
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 200)
    noise = rng.dirichlet([1, 1, 1], size=200)
    truth = np.eye(3)[y]
    weak, strong = 0.8 * noise + 0.2 * truth, 0.4 * noise + 0.6 * truth  # B sees more of the truth
    return (
        y,
        weak,
        strong,
        write_predictions(tmp_path / "a", y, weak),
        write_predictions(tmp_path / "b", y, strong),
    )


def test_a_better_model_shows_a_positive_paired_difference(two_models):
    y, weak, strong, a, b = two_models
    result = compare(a, b, n_resamples=300)
    assert result["units"] == 200 and result["patients"] == 100 and result["only_in_one"] == 0
    auc = result["metrics"]["macro_auc"]
    assert auc["a"] == pytest.approx(headline_metrics(y, weak)["macro_auc"], abs=1e-5)
    assert auc["b"] == pytest.approx(headline_metrics(y, strong)["macro_auc"], abs=1e-5)
    assert auc["difference"] == pytest.approx(auc["b"] - auc["a"])
    assert 0 < auc["ci"][0] < auc["difference"] < auc["ci"][1] and auc["b_better_share"] == 1.0
    reverse = compare(b, a, n_resamples=300)["metrics"]["macro_auc"]
    assert reverse["difference"] == pytest.approx(-auc["difference"]) and reverse["ci"][1] < 0


def test_a_model_against_itself_differs_by_nothing(two_models):
    _, _, _, a, _ = two_models
    for row in compare(a, a, n_resamples=50)["metrics"].values():
        assert row["difference"] == 0 and row["ci"] == [0, 0] and row["b_better_share"] == 0


def test_only_the_units_both_scored_are_compared_and_mismatches_are_refused(two_models, tmp_path):
    y, weak, strong, a, _ = two_models
    fewer = write_predictions(tmp_path / "fewer", y[:150], strong[:150])
    assert compare(a, fewer, n_resamples=20)["only_in_one"] == 50
    relabelled = write_predictions(tmp_path / "relabelled", (y + 1) % 3, strong)
    with pytest.raises(DataError, match="carry different labels"):
        compare(a, relabelled)
    other = write_predictions(tmp_path / "other", y, strong, classes=["normal", "dr", "rvo"])
    with pytest.raises(DataError, match="classes"):
        compare(a, other)
    with pytest.raises(DataError, match="no predictions.csv; run `eyescreen evaluate` first"):
        compare(a, tmp_path / "missing")


def test_compare_on_the_command_line(two_models, tmp_path, capsys):
    _, _, _, a, b = two_models
    out = tmp_path / "comparison.json"
    assert (
        main(["compare", str(a), str(b / "predictions.csv"), "--bootstrap", "100", "--json", str(out)]) == 0
    )
    printed = capsys.readouterr().out
    assert "200 images of 100 patients scored by both" in printed and "macro-AUC" in printed
    assert json.loads(out.read_text())["metrics"]["macro_auc"]["difference"] > 0
    assert main(["compare", str(a), str(tmp_path / "nowhere")]) == 2
    assert f"{tmp_path / 'nowhere'}: no predictions.csv" in capsys.readouterr().err


def test_the_verdict_names_the_metrics_whose_interval_holds_zero(two_models):
    from eyescreen.compare import comparison_lines

    _, _, _, a, b = two_models
    apart = compare(a, b, n_resamples=200)
    assert all(r["ci"][0] > 0 for r in apart["metrics"].values())  # B sees far more of the truth
    lines = comparison_lines(apart)
    assert "no interval holds 0: on these patients B differs from A in every metric above" in lines
    assert not any("cannot tell" in line for line in lines)
    same = comparison_lines(compare(a, a, n_resamples=20))
    assert (
        "accuracy, balanced accuracy, macro-AUC: the interval holds 0; these patients cannot tell A and B apart there"
        in same
    )
