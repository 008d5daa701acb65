"""Post-hoc calibration and the screening operating point, fitted on the validation split.

* Temperature scaling (Guo et al., 2017): one scalar T dividing the logits, chosen to minimise the
  validation negative log-likelihood. It never changes the predicted class.
* Referable = any disease: score = 1 - P(normal class); the threshold is the lowest score that keeps
  specificity on validation normals at the target (90% by default).
Both are stored in the checkpoint and used by `predict` and `evaluate`.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import minimize_scalar


def apply_temperature(prob: np.ndarray, temperature: float) -> np.ndarray:
    """Re-temper probabilities: softmax(log p / T) equals softmax(logits / T)."""
    if temperature == 1.0:
        return prob
    z = np.log(np.clip(prob, 1e-12, 1.0)) / temperature
    z -= z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def fit_temperature(prob: np.ndarray, y: np.ndarray) -> float:
    def nll(log_t: float) -> float:
        p = apply_temperature(prob, float(np.exp(log_t)))
        return float(-np.mean(np.log(np.clip(p[np.arange(len(y)), y], 1e-12, 1.0))))

    result = minimize_scalar(nll, bounds=(np.log(0.05), np.log(20.0)), method="bounded")
    return float(np.exp(result.x))


def referable_threshold(prob: np.ndarray, y: np.ndarray, normal: int, specificity: float = 0.9) -> dict:
    """Threshold on 1 - P(normal) reaching `specificity` on the normals, and its sensitivity for disease."""
    score = 1.0 - prob[:, normal]
    healthy, diseased = score[y == normal], score[y != normal]
    if len(healthy) == 0 or len(diseased) == 0:
        raise ValueError("the referable operating point needs both normal and diseased eyes")
    threshold = float(np.quantile(healthy, specificity, method="higher"))
    return {
        "threshold": threshold,
        "target_specificity": specificity,
        **operating_point(prob, y, normal, threshold),
    }


def operating_point(prob: np.ndarray, y: np.ndarray, normal: int, threshold: float) -> dict:
    """Sensitivity (diseased flagged) and specificity (normals not flagged) at `threshold`."""
    referable = (1.0 - prob[:, normal]) > threshold
    diseased = y != normal
    return {
        "sensitivity": float(referable[diseased].mean()) if diseased.any() else float("nan"),
        "specificity": float((~referable[~diseased]).mean()) if (~diseased).any() else float("nan"),
    }


def calibrate(prob: np.ndarray, y: np.ndarray, classes: list[str], normal_class: str = "normal") -> dict:
    temperature = fit_temperature(prob, y)
    out = {"temperature": temperature, "fitted_on": "val"}
    if normal_class in classes:
        calibrated = apply_temperature(prob, temperature)
        out["referable"] = {"normal_class": normal_class}
        out["referable"] |= referable_threshold(calibrated, y, classes.index(normal_class))
    return out


def calibrate_checkpoint(path, prob: np.ndarray, y: np.ndarray, normal_class: str = "normal") -> dict | None:
    """Fit temperature and referable threshold on validation probabilities of the checkpoint's model
    and store them in the checkpoint."""
    import sys

    from .checkpoint import load_model, save_model

    model, meta = load_model(path)
    try:
        meta["calibration"] = calibrate(prob, y, meta["classes"], normal_class)
    except ValueError as e:  # e.g. a validation split without normals: keep the checkpoint uncalibrated
        print(f"calibration skipped: {e}", file=sys.stderr)
        return None
    save_model(path, model, meta)
    c = meta["calibration"]
    line = f"calibrated on validation: temperature {c['temperature']:.3f}"
    if "referable" in c:
        r = c["referable"]
        line += (f"; referable if 1 - P({normal_class}) > {r['threshold']:.3f} "
                 f"(val sensitivity {r['sensitivity']:.3f} at specificity {r['specificity']:.3f})")  # fmt: skip
    print(line)
    return c
