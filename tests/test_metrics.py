import numpy as np
import pytest
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    cohen_kappa_score,
    f1_score,
    roc_auc_score,
)

from eyescreen.metrics import bootstrap_ci, classification_metrics, expected_calibration_error

CLASSES = ["a", "b", "c"]
Y = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2, 1])
PROB = np.array(
    [
        [0.8, 0.1, 0.1], [0.6, 0.3, 0.1], [0.2, 0.7, 0.1], [0.1, 0.8, 0.1], [0.5, 0.4, 0.1],
        [0.1, 0.1, 0.8], [0.2, 0.2, 0.6], [0.1, 0.5, 0.4], [0.3, 0.3, 0.4], [0.2, 0.6, 0.2],
    ]
)  # fmt: skip
PRED = PROB.argmax(1)  # [0 0 1 1 0 2 2 1 2 1]


def test_metrics_equal_scikit_learn_and_hand_counts():
    m = classification_metrics(Y, PROB, CLASSES)
    assert m["accuracy"] == pytest.approx(accuracy_score(Y, PRED)) == pytest.approx(0.7)
    assert m["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(Y, PRED))
    assert m["macro_f1"] == pytest.approx(f1_score(Y, PRED, average="macro"))
    assert m["cohen_kappa"] == pytest.approx(cohen_kappa_score(Y, PRED))
    assert m["macro_auc"] == pytest.approx(roc_auc_score(Y, PROB, multi_class="ovr", average="macro"))
    # class b: true 3, predicted 4 of which 2 right -> precision 0.5, sensitivity 2/3,
    # specificity: 7 non-b, 2 of them predicted b -> 5/7
    b = m["per_class"]["b"]
    assert (b["support"], b["precision"], b["sensitivity"]) == (3, 0.5, pytest.approx(2 / 3))
    assert b["specificity"] == pytest.approx(5 / 7)
    assert m["confusion_matrix"] == [[2, 1, 0], [1, 2, 0], [0, 1, 3]]


def test_expected_calibration_error_by_hand():
    # Two bins: confidence 0.9 (4 samples, 3 right) and 0.6 (2 samples, 2 right).
    prob = np.array([[0.9, 0.1]] * 4 + [[0.6, 0.4]] * 2)
    y = np.array([0, 0, 0, 1, 0, 0])
    expected = 4 / 6 * abs(0.75 - 0.9) + 2 / 6 * abs(1.0 - 0.6)
    assert expected_calibration_error(y, prob) == pytest.approx(expected)
    perfect = np.eye(2)[[0, 1, 1, 0]]
    assert expected_calibration_error(np.array([0, 1, 1, 0]), perfect) == pytest.approx(0.0)


def test_bootstrap_resamples_patients_not_images():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 200)
    prob = rng.dirichlet(np.ones(3), 200)
    prob[np.arange(200), y] += 0.5
    prob /= prob.sum(1, keepdims=True)
    acc = classification_metrics(y, prob, CLASSES)["accuracy"]
    per_image = bootstrap_ci(y, prob, np.arange(200), n_resamples=300)
    lo, hi = per_image["accuracy"]
    assert lo < acc < hi
    # Ten big "patients": far fewer independent units, so the interval must be wider.
    per_patient = bootstrap_ci(y, prob, np.arange(200) // 20, n_resamples=300)
    assert per_patient["unit"] == "patient"
    assert bootstrap_ci(y, prob, np.arange(200) // 20, n_resamples=300) == per_patient  # seeded
    assert per_patient["accuracy"] != per_image["accuracy"]


@pytest.mark.parametrize("seed", range(4))
def test_the_bootstraps_numpy_metrics_equal_scikit_learns(seed):
    from eyescreen.metrics import headline_metrics, patient_resamples, resample_metrics

    rng = np.random.default_rng(seed)
    n, k = 120, 4
    y = rng.choice(k, n, p=[0.6, 0.3, 0.06, 0.04])  # rare classes: some resamples lack them
    prob = rng.dirichlet(np.ones(k), n)
    prob[: n // 3] = np.round(prob[: n // 3], 1)  # many ties, which AUC counts as half
    prob /= prob.sum(axis=1, keepdims=True)
    weights = None if seed % 2 else np.array([1.0, 2.0, 9.0, 15.0])
    groups = np.repeat(np.arange(n // 2), 2)
    for idx in patient_resamples(groups, 40, rng):
        fast, reference = (
            resample_metrics(y[idx], prob[idx], weights),
            headline_metrics(y[idx], prob[idx], weights),
        )
        assert fast.keys() == reference.keys()
        for name in fast:
            assert fast[name] == pytest.approx(reference[name], abs=1e-12), name
    one_class = np.zeros(10, dtype=int)  # no negatives for any AUC: undefined, as in headline_metrics
    assert np.isnan(resample_metrics(one_class, np.full((10, k), 0.25))["macro_auc"])
