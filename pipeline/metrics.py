"""Classification metrics as BirdSet and BEANS report them, on top of scikit-learn.

Classes without a positive example (or, for AUROC, without a negative) have
no defined score. They are left out of the class mean and counted, never
allowed to crash or to count as zero.
"""

from __future__ import annotations

import warnings

import numpy as np
from sklearn import metrics as sk_metrics


def _scorable(labels: np.ndarray, need_negative: bool) -> np.ndarray:
    positives = labels.sum(axis=0)
    keep = positives > 0
    if need_negative:
        keep &= positives < labels.shape[0]
    return keep


def per_class_average_precision(scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Return the average precision of each class, NaN where it has no positive."""
    binary = labels > 0
    keep = _scorable(binary, need_negative=False)
    result = np.full(labels.shape[1], np.nan)
    for index in np.flatnonzero(keep):
        result[index] = sk_metrics.average_precision_score(binary[:, index], scores[:, index])
    return result


def per_class_auroc(scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Return the ROC AUC of each class, NaN where it lacks positives or negatives."""
    binary = labels > 0
    keep = _scorable(binary, need_negative=True)
    result = np.full(labels.shape[1], np.nan)
    for index in np.flatnonzero(keep):
        result[index] = sk_metrics.roc_auc_score(binary[:, index], scores[:, index])
    return result


def top1_accuracy(scores: np.ndarray, labels: np.ndarray) -> float:
    """Return the share of examples whose highest-scoring class is a positive."""
    rows = labels.sum(axis=1) > 0
    if not rows.any():
        return float("nan")
    best = scores[rows].argmax(axis=1)
    return float(np.mean(labels[rows, best] > 0))


def _nanmean(values: np.ndarray) -> float:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=RuntimeWarning)
        return float(np.nanmean(values)) if np.isfinite(values).any() else float("nan")


def classification_scores(scores: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Return cmAP, macro AUROC, top-1 and the number of classes each averages over.

    `scores` and `labels` are [examples, classes]; labels are multi-hot.
    """
    average_precision = per_class_average_precision(scores, labels)
    auroc = per_class_auroc(scores, labels)
    return {
        "cmap": _nanmean(average_precision),
        "auroc": _nanmean(auroc),
        "top1": top1_accuracy(scores, labels),
        "cmap_classes": float(np.isfinite(average_precision).sum()),
        "auroc_classes": float(np.isfinite(auroc).sum()),
    }
