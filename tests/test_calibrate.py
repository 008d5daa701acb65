import numpy as np
import pytest

from eyescreen.calibrate import (
    apply_temperature,
    calibrate,
    fit_temperature,
    operating_point,
    referable_threshold,
)
from eyescreen.metrics import expected_calibration_error


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
    with pytest.raises(ValueError, match="both normal and diseased"):
        referable_threshold(prob[y == 0], y[y == 0], normal=0)
