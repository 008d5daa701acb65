"""Post-hoc calibration and the screening operating point, fitted on the validation split.

* Temperature scaling (Guo et al., 2017): one scalar T dividing the logits, chosen to minimise the
  validation negative log-likelihood. It never changes the predicted class.
* Referable = any disease: score = 1 - P(normal class); the threshold is the lowest score that keeps
  specificity on validation normals at the target (90% by default).
* Decision rule (post-hoc logit adjustment, Menon et al. 2021): the predicted class is
  argmax_k P(k) / prior_k^tau, tau in [0, 2] chosen for the best validation balanced accuracy. With
  normal at 58% of the eyes and AMD/glaucoma at ~5%, plain argmax rarely names a rare disease; the
  weights trade accuracy on normals for sensitivity to the rare classes. Probabilities stay as they are.
All are stored in the checkpoint and used by `predict`, `serve` and `evaluate`.
"""

from __future__ import annotations

import warnings

import numpy as np
from scipy.optimize import minimize_scalar

from .metrics import log_loss


def apply_temperature(prob: np.ndarray, temperature: float) -> np.ndarray:
    """Re-temper probabilities: softmax(log p / T) equals softmax(logits / T)."""
    if temperature == 1.0:
        return prob
    z = np.log(np.clip(prob, 1e-12, 1.0)) / temperature
    z -= z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


TEMPERATURES = (0.05, 20.0)  # the search range: wide enough for any model whose scores mean something


def fit_temperature(prob: np.ndarray, y: np.ndarray) -> float:
    def nll(log_t: float) -> float:
        return log_loss(y, apply_temperature(prob, float(np.exp(log_t))))

    result = minimize_scalar(nll, bounds=tuple(np.log(TEMPERATURES)), method="bounded")
    return float(np.exp(result.x))


def temperature_note(temperature: float) -> str:
    """What a temperature at the edge of its range says about the model ('' inside it)."""
    low, high = TEMPERATURES
    if temperature >= 0.99 * high:  # the log-loss still falls as probabilities flatten towards uniform
        return (f"the temperature is at the top of its range ({high:g}): on validation the model's confident "
                "answers are so often wrong that flatter probabilities always score better; its scores mean "
                "little yet (more data or epochs)")  # fmt: skip
    if temperature <= 1.01 * low:
        return (f"the temperature is at the bottom of its range ({low:g}): the model's probabilities are far "
                "flatter than its validation accuracy warrants")  # fmt: skip
    return ""


def referable_threshold(prob: np.ndarray, y: np.ndarray, normal: int, specificity: float = 0.9) -> dict:
    """Threshold on 1 - P(normal) reaching `specificity` on the normals, and its sensitivity for disease."""
    score = 1.0 - prob[:, normal]
    healthy, diseased = score[y == normal], score[y != normal]
    if len(healthy) == 0 or len(diseased) == 0:
        raise ValueError("the referable operating point needs both normal and diseased eyes")
    threshold = specificity_threshold(healthy, specificity)
    return {
        "threshold": threshold,
        "target_specificity": specificity,
        **operating_point(prob, y, normal, threshold),
    }


def specificity_threshold(healthy_scores: np.ndarray, specificity: float) -> float:
    """The lowest threshold that `specificity` of the healthy scores do not exceed (flag: score > it)."""
    return float(np.quantile(healthy_scores, specificity, method="higher"))


def operating_point(prob: np.ndarray, y: np.ndarray, normal: int, threshold: float) -> dict:
    """Sensitivity (diseased flagged) and specificity (normals not flagged) at `threshold`."""
    referable = (1.0 - prob[:, normal]) > threshold
    diseased = y != normal
    return {
        "sensitivity": float(referable[diseased].mean()) if diseased.any() else float("nan"),
        "specificity": float((~referable[~diseased]).mean()) if (~diseased).any() else float("nan"),
    }


PRIOR_POWERS = tuple(np.linspace(0, 2, 9))  # tau = 1 is the Bayes-optimal rule for balanced error


def rule_weights(y: np.ndarray, n_classes: int, tau: float) -> np.ndarray:
    """The decision rule's class weights prior^-tau, the prior being the class frequencies of y."""
    prior = np.bincount(y, minlength=n_classes).clip(min=1) / len(y)
    return prior**-tau


def decision_scores(prob: np.ndarray, y: np.ndarray, n_classes: int, powers=PRIOR_POWERS) -> np.ndarray:
    """Balanced accuracy of the rule argmax P(class) x prior^-tau for each tau (prior: the classes of y)."""
    return np.array([_balanced_accuracy(y, decide(prob, rule_weights(y, n_classes, t))) for t in powers])


def score_spread(prob, y, groups, n_classes: int, tau: float, n_resamples: int = 100, rng=None) -> float:
    """Patient-bootstrap standard error of the balanced accuracy of the rule with prior power `tau`."""
    from .metrics import patient_resamples

    rng = rng if rng is not None else np.random.default_rng(0)
    pred = decide(prob, rule_weights(y, n_classes, tau))
    scores = [_balanced_accuracy(y[rows], pred[rows]) for rows in patient_resamples(groups, n_resamples, rng)]
    return float(np.std(scores))


def choose_power(scores: np.ndarray, powers=PRIOR_POWERS, tolerance: float = 0.0) -> float:
    """The smallest tau whose score is within `tolerance` of the best (0: the first maximum)."""
    return float(np.asarray(powers)[np.flatnonzero(scores >= scores.max() - tolerance)[0]])


def _balanced_accuracy(y: np.ndarray, pred: np.ndarray) -> float:
    from sklearn.metrics import balanced_accuracy_score

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "y_pred contains classes not in y_true" on small splits
        return float(balanced_accuracy_score(y, pred))


def fit_decision(prob: np.ndarray, y: np.ndarray, n_classes: int, powers=PRIOR_POWERS) -> dict:
    """Class weights prior^-tau for the decision, tau maximising balanced accuracy (ties: smaller tau)."""
    scores = decision_scores(prob, y, n_classes, powers)
    tau = choose_power(scores, powers)
    best = list(powers).index(tau)
    return {
        "rule": "argmax of P(class) x class_weight",
        "prior_power": tau,
        "class_weights": [float(w) for w in rule_weights(y, n_classes, tau)],
        "val_balanced_accuracy": float(scores[best]),
        "val_balanced_accuracy_argmax": float(scores[0]),
    }


def class_weights(calibration: dict | None) -> np.ndarray | None:
    """The decision weights stored in a checkpoint's calibration, or None (plain argmax)."""
    weights = (calibration or {}).get("decision", {}).get("class_weights")
    return np.asarray(weights, dtype=float) if weights else None


def describe_outputs(calibration: dict | None) -> list[str]:
    """What `predicted` and `referable` mean for this checkpoint, in a line each, for the console after
    `predict`: the two answer different questions at different operating points, and can disagree."""
    calibration = calibration or {}
    lines = []
    power = calibration.get("decision", {}).get("prior_power", 0.0)
    if power:
        lines.append(
            f"predicted: the decision rule's class, P(class) x prior^-{power:g} (fitted on validation for "
            "balanced accuracy): it can name a rare disease at a low probability; read the probabilities too"
        )
    if referable := calibration.get("referable"):
        where = ""  # an older checkpoint may not record its operating point
        if "target_specificity" in referable and "sensitivity" in referable:
            where = (f", set for {referable['target_specificity']:.0%} specificity on validation (sensitivity "
                     f"there {referable['sensitivity']:.2f})")  # fmt: skip
        lines.append(
            f"referable: 1 - P({referable['normal_class']}) > {referable['threshold']:.3f}{where}: "
            "the screening flag, which may disagree with `predicted`"
        )
    return lines


def decide(prob: np.ndarray, weights: np.ndarray | None) -> np.ndarray:
    """Predicted class per row (or for one probability vector) under the decision weights."""
    return (prob if weights is None else prob * weights).argmax(axis=-1)


def normal_class_of(classes: list[str], wanted: str = "normal") -> str | None:
    """The class named `wanted`, or the one class named so but for case (class folders are often
    "Normal" or "NORMAL"); None when there is none, and so no screening operating point."""
    if wanted in classes:
        return wanted
    same = [c for c in classes if c.casefold() == wanted.casefold()]
    return same[0] if len(same) == 1 else None


def calibrate(prob: np.ndarray, y: np.ndarray, classes: list[str], normal_class: str = "normal") -> dict:
    temperature = fit_temperature(prob, y)
    out = {"temperature": temperature, "fitted_on": "val"}
    calibrated = apply_temperature(prob, temperature)
    out["decision"] = fit_decision(calibrated, y, len(classes))
    if normal_class := normal_class_of(classes, normal_class):
        out["referable"] = {"normal_class": normal_class}
        out["referable"] |= referable_threshold(calibrated, y, classes.index(normal_class))
    return out


def eye_calibration(calibration: dict | None) -> dict:
    """What calibrates one eye's probabilities: a both-eye model's own per-eye fit (`"eye"`: its eye head
    has other priors and another temperature than its patient head, and a patient's rule makes poor eye
    decisions) where the checkpoint has one, else the checkpoint's calibration itself."""
    calibration = calibration or {}
    return calibration.get("eye", calibration)


def describe(calibration: dict) -> str:
    """A line for the training log: what was fitted on validation (and a note under it where the
    temperature sits at the edge of its range)."""
    c, d = calibration, calibration["decision"]
    line = (f"calibrated on validation: temperature {c['temperature']:.3f}; decision weights prior^-"
            f"{d['prior_power']:.2f} (val balanced accuracy {d['val_balanced_accuracy_argmax']:.3f} -> "
            f"{d['val_balanced_accuracy']:.3f})")  # fmt: skip
    if "referable" in c:
        r = c["referable"]
        line += (f"; referable if 1 - P({r['normal_class']}) > {r['threshold']:.3f} "
                 f"(val sensitivity {r['sensitivity']:.3f} at specificity {r['specificity']:.3f})")  # fmt: skip
    if note := temperature_note(c["temperature"]):
        line += f"\nnote: {note}"
    return line
