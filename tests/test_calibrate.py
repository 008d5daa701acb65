import numpy as np
import pytest

from eyescreen.calibrate import (
    apply_temperature,
    calibrate,
    describe,
    fit_temperature,
    normal_class_of,
    operating_point,
    referable_threshold,
    temperature_note,
)
from eyescreen.metrics import expected_calibration_error, log_loss


def overconfident(n=600, seed=0):
    """Logits that rank well but are three times too sharp."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    logits = rng.normal(0, 1, (n, 3))
    logits[np.arange(n), y] += 1.0
    z = 3 * logits
    p = np.exp(z - z.max(1, keepdims=True))
    return p / p.sum(1, keepdims=True), y


def test_temperature_scaling_fixes_overconfidence_without_changing_predictions():
    prob, y = overconfident()
    t = fit_temperature(prob, y)
    assert 2.0 < t < 4.5
    calibrated = apply_temperature(prob, t)
    assert np.array_equal(calibrated.argmax(1), prob.argmax(1))
    assert expected_calibration_error(y, calibrated) < expected_calibration_error(y, prob) / 2
    # the fitted temperature is the log-loss minimum: either side of it is worse
    assert log_loss(y, calibrated) < log_loss(y, prob)
    for nearby in (0.9 * t, 1.1 * t):
        assert log_loss(y, calibrated) < log_loss(y, apply_temperature(prob, nearby))


def test_log_loss_is_the_mean_negative_log_probability_of_the_true_class():
    prob = np.array([[0.5, 0.5], [0.9, 0.1], [0.2, 0.8]])
    assert log_loss(np.array([0, 0, 1]), prob) == pytest.approx(-np.mean(np.log([0.5, 0.9, 0.8])))
    assert log_loss(np.array([1]), np.array([[1.0, 0.0]])) == pytest.approx(-np.log(1e-12))  # clipped, finite


def test_referable_threshold_reaches_the_target_specificity():
    prob, y = overconfident()
    op = referable_threshold(prob, y, normal=0, specificity=0.9)
    assert op["specificity"] >= 0.9 and op["specificity"] < 0.93
    assert 0 < op["sensitivity"] <= 1
    again = operating_point(prob, y, 0, op["threshold"])
    assert again == {"sensitivity": op["sensitivity"], "specificity": op["specificity"]}


def test_calibrate_needs_both_normal_and_disease():
    prob, y = overconfident()
    out = calibrate(prob, y, ["normal", "dr", "amd"])
    assert out["referable"]["normal_class"] == "normal"
    assert "referable" not in calibrate(prob, y, ["a", "b", "c"])  # no normal class: temperature only
    # class folders are often "Normal": the same class, spelt as the data spells it
    assert calibrate(prob, y, ["Normal", "DR", "AMD"])["referable"]["normal_class"] == "Normal"
    assert normal_class_of(["NORMAL", "dr"]) == "NORMAL" and normal_class_of(["healthy", "dr"]) is None
    assert normal_class_of(["Normal", "normal"], "NORMAL") is None  # two candidates: none is guessed
    assert normal_class_of(["healthy", "dr"], "Healthy") == "healthy"
    with pytest.raises(ValueError, match="both normal and diseased"):
        referable_threshold(prob[y == 0], y[y == 0], normal=0)


def imbalanced(n=2000, seed=0):
    """A frequent class and two rare ones whose probabilities rank well but rarely win the argmax."""
    rng = np.random.default_rng(seed)
    y = rng.choice(3, n, p=[0.8, 0.1, 0.1])
    logits = rng.normal(0, 1, (n, 3)) + np.log([0.8, 0.1, 0.1])
    logits[np.arange(n), y] += 1.5
    p = np.exp(logits - logits.max(1, keepdims=True))
    return p / p.sum(1, keepdims=True), y


def test_decision_weights_raise_balanced_accuracy_on_rare_classes():
    from sklearn.metrics import balanced_accuracy_score

    from eyescreen.calibrate import decide, fit_decision

    prob, y = imbalanced()
    d = fit_decision(prob, y, 3)
    weights = np.asarray(d["class_weights"])
    assert d["prior_power"] > 0 and weights[1] > weights[0] and weights[2] > weights[0]
    assert d["val_balanced_accuracy"] > d["val_balanced_accuracy_argmax"] + 0.1
    # On fresh data from the same source the rule still beats plain argmax.
    prob2, y2 = imbalanced(seed=1)
    assert (
        balanced_accuracy_score(y2, decide(prob2, weights))
        > balanced_accuracy_score(y2, prob2.argmax(1)) + 0.1
    )
    assert decide(prob2[0], weights) == decide(prob2[:1], weights)[0]  # one vector or a batch
    # Balanced classes: the prior is flat, the weights are near 1 and change next to nothing.
    prob3, y3 = overconfident()
    d3 = fit_decision(prob3, y3, 3)
    assert max(d3["class_weights"]) / min(d3["class_weights"]) < 1.3
    assert d3["val_balanced_accuracy"] - d3["val_balanced_accuracy_argmax"] < 0.02
    assert np.array_equal(decide(prob3, None), prob3.argmax(1))


def test_choosing_the_prior_power_with_a_tolerance_and_its_bootstrap_spread():
    from eyescreen.calibrate import PRIOR_POWERS, choose_power, decision_scores, score_spread

    scores = np.array([0.5, 0.6, 0.68, 0.7, 0.7, 0.69, 0.6, 0.5, 0.4])
    assert choose_power(scores) == PRIOR_POWERS[3]  # the first maximum: the smaller tau
    assert choose_power(scores, PRIOR_POWERS, 0.025) == PRIOR_POWERS[2]  # within the tolerance
    prob, y = imbalanced()
    measured = decision_scores(prob, y, 3)
    assert measured.shape == (len(PRIOR_POWERS),) and measured.max() > measured[0] + 0.1
    groups = np.arange(len(y)) // 2  # two eyes a patient
    spread = score_spread(prob, y, groups, 3, choose_power(measured))
    assert 0.005 < spread < 0.1  # a few hundred rows: a few points of balanced accuracy
    perfect = np.eye(3)[y]
    assert score_spread(perfect, y, groups, 3, 1.0) == 0.0


def test_calibrate_stores_the_decision_rule():
    prob, y = imbalanced()
    out = calibrate(prob, y, ["normal", "dr", "amd"])
    assert len(out["decision"]["class_weights"]) == 3


def test_a_temperature_at_the_edge_of_its_range_is_explained():
    """Scores that do not rank the labels at all: flatter is always better, up to the range's top."""
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 300)
    z = 5 * rng.normal(0, 1, (300, 3))  # confident, and unrelated to y
    prob = np.exp(z - z.max(1, keepdims=True))
    prob /= prob.sum(1, keepdims=True)
    fitted = calibrate(prob, y, ["normal", "dr", "amd"])
    assert fitted["temperature"] == pytest.approx(20.0, rel=0.01)
    assert "at the top of its range (20)" in temperature_note(fitted["temperature"])
    assert "note: the temperature is at the top of its range" in describe(fitted)
    good = calibrate(*overconfident(), ["normal", "dr", "amd"])  # a model whose scores rank well
    assert temperature_note(good["temperature"]) == "" and "note:" not in describe(good)
    assert "bottom of its range" in temperature_note(0.05)
