"""Classification metrics as plain functions on arrays, computed with scikit-learn.

Written here: expected calibration error (scikit-learn has calibration curves but no ECE), and the
bootstrap's headline metrics in numpy (`resample_metrics`: scikit-learn's per-call checks dominate
thousands of resamples; a test holds it equal to scikit-learn's).
"""

from __future__ import annotations

import warnings

import numpy as np
from scipy.stats import rankdata
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    cohen_kappa_score,
    confusion_matrix,
    f1_score,
    multilabel_confusion_matrix,
    precision_recall_fscore_support,
    roc_auc_score,
)


def _per_class_auc(y: np.ndarray, prob: np.ndarray, n_classes: int) -> list[float]:
    """One-vs-rest ROC-AUC per class; NaN where the class (or its complement) is absent."""
    aucs = []
    for c in range(n_classes):
        positive = y == c
        if positive.all() or not positive.any():
            aucs.append(float("nan"))
        else:
            aucs.append(float(roc_auc_score(positive, prob[:, c])))
    return aucs


def macro_auc(y: np.ndarray, prob: np.ndarray) -> float:
    aucs = [a for a in _per_class_auc(y, prob, prob.shape[1]) if not np.isnan(a)]
    return float(np.mean(aucs)) if aucs else float("nan")


def expected_calibration_error(y: np.ndarray, prob: np.ndarray, n_bins: int = 15) -> float:
    """Top-label ECE: |accuracy - confidence| per equal-width confidence bin, weighted by bin size."""
    confidence = prob.max(axis=1)
    correct = prob.argmax(axis=1) == y
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    bins = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, n_bins - 1)
    ece = 0.0
    for b in range(n_bins):
        in_bin = bins == b
        if in_bin.any():
            ece += in_bin.mean() * abs(correct[in_bin].mean() - confidence[in_bin].mean())
    return float(ece)


def log_loss(y: np.ndarray, prob: np.ndarray) -> float:
    """Mean negative log-likelihood of the true class: what temperature scaling minimises on validation.
    (scikit-learn's log_loss re-normalises rows and needs every label listed; these rows sum to 1.)"""
    return float(-np.mean(np.log(np.clip(prob[np.arange(len(y)), y], 1e-12, 1.0))))


def _predicted(prob: np.ndarray, weights: np.ndarray | None) -> np.ndarray:
    """argmax, or argmax under decision weights (calibrate.fit_decision); AUCs never use them."""
    return (prob if weights is None else prob * weights).argmax(axis=1)


def headline_metrics(y: np.ndarray, prob: np.ndarray, weights: np.ndarray | None = None) -> dict:
    """The three numbers used for model selection and bootstrap intervals."""
    pred = _predicted(prob, weights)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # balanced accuracy warns when a class is absent from y
        return {
            "accuracy": float(accuracy_score(y, pred)),
            "balanced_accuracy": float(balanced_accuracy_score(y, pred)),
            "macro_auc": macro_auc(y, prob),
        }


def resample_metrics(y: np.ndarray, prob: np.ndarray, weights: np.ndarray | None = None) -> dict:
    """`headline_metrics` in plain numpy, for the bootstrap's thousands of resamples, where scikit-learn's
    input checks cost ~20 ms a call (minutes for an evaluation). The same numbers: one-vs-rest AUC as the
    Mann-Whitney statistic on average ranks (ties count half, as in roc_auc_score), balanced accuracy as
    the mean recall over the classes present in `y` (as balanced_accuracy_score)."""
    return label_metrics(y, _predicted(prob, weights)) | {"macro_auc": rank_macro_auc(y, prob)}


def label_metrics(y: np.ndarray, pred: np.ndarray) -> dict:
    """Accuracy and balanced accuracy (mean recall over the classes present in `y`) of named classes."""
    recall = [np.mean(pred[y == c] == c) for c in np.unique(y)]
    return {"accuracy": float(np.mean(pred == y)), "balanced_accuracy": float(np.mean(recall))}


def rank_macro_auc(y: np.ndarray, prob: np.ndarray) -> float:
    """Macro one-vs-rest ROC-AUC from ranks, over the classes with positives and negatives in `y`."""
    ranks = rankdata(prob, axis=0)
    aucs = []
    for c in range(prob.shape[1]):
        positive = y == c
        n_pos = int(positive.sum())
        n_neg = len(y) - n_pos
        if n_pos and n_neg:
            aucs.append((ranks[positive, c].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))
    return float(np.mean(aucs)) if aucs else float("nan")


def classification_metrics(
    y: np.ndarray, prob: np.ndarray, classes: list[str], weights: np.ndarray | None = None
) -> dict:
    n = len(classes)
    labels = list(range(n))
    pred = _predicted(prob, weights)
    precision, recall, f1, support = precision_recall_fscore_support(y, pred, labels=labels, zero_division=0)
    mcm = multilabel_confusion_matrix(y, pred, labels=labels)  # per class [[tn, fp], [fn, tp]]
    tn, fp = mcm[:, 0, 0], mcm[:, 0, 1]
    specificity = np.divide(tn, tn + fp, out=np.full(n, np.nan), where=(tn + fp) > 0)
    aucs = _per_class_auc(y, prob, n)
    out = headline_metrics(y, prob, weights)
    out.update(
        {
            "n": int(len(y)),
            "macro_f1": float(f1_score(y, pred, labels=labels, average="macro", zero_division=0)),
            "cohen_kappa": float(cohen_kappa_score(y, pred, labels=labels)),
            "ece": expected_calibration_error(y, prob),
            "confusion_matrix": confusion_matrix(y, pred, labels=labels).tolist(),
            "per_class": {
                c: {
                    "support": int(support[i]),
                    "precision": float(precision[i]),
                    "sensitivity": float(recall[i]),
                    "specificity": float(specificity[i]),
                    "f1": float(f1[i]),
                    "roc_auc": aucs[i],
                }
                for i, c in enumerate(classes)
            },
        }
    )
    return out


def patient_resamples(groups: np.ndarray, n_resamples: int, rng: np.random.Generator):
    """Row indices of `n_resamples` bootstrap samples, each drawing whole patients with replacement."""
    unique, inverse = np.unique(groups, return_inverse=True)
    members = [np.flatnonzero(inverse == g) for g in range(len(unique))]
    for _ in range(n_resamples):
        yield np.concatenate([members[g] for g in rng.integers(0, len(unique), len(unique))])


def bootstrap_ci(
    y: np.ndarray,
    prob: np.ndarray,
    groups: np.ndarray,
    n_resamples: int = 1000,
    seed: int = 0,
    level: float = 0.95,
    weights: np.ndarray | None = None,
) -> dict:
    """Percentile confidence intervals of the headline metrics, resampling whole patients.

    Both eyes of a patient are correlated, so resampling images would make intervals too narrow.
    """
    samples: dict[str, list[float]] = {k: [] for k in ("accuracy", "balanced_accuracy", "macro_auc")}
    for idx in patient_resamples(groups, n_resamples, np.random.default_rng(seed)):
        for k, v in resample_metrics(y[idx], prob[idx], weights).items():
            samples[k].append(v)
    alpha = (1 - level) / 2
    out = {}
    for k, values in samples.items():
        v = np.asarray(values, dtype=float)
        v = v[~np.isnan(v)]
        out[k] = [float(np.quantile(v, alpha)), float(np.quantile(v, 1 - alpha))] if len(v) else [None, None]
    out["n_resamples"] = n_resamples
    out["unit"] = "patient"
    return out
