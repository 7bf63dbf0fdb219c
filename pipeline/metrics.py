"""Classification metrics as BirdSet and BEANS report them, on top of scikit-learn.

Classes without a positive example (or, for AUROC, without a negative) have
no defined score. They are left out of the class mean and counted, never
allowed to crash or to count as zero.
"""

from __future__ import annotations

import warnings

import numpy as np
import polars as pl
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
    if keep.any():
        # One call for all classes: scikit-learn's input checks cost more
        # than the score itself on small tables.
        result[keep] = sk_metrics.average_precision_score(binary[:, keep], scores[:, keep], average=None)
    return result


def per_class_auroc(scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Return the ROC AUC of each class, NaN where it lacks positives or negatives."""
    binary = labels > 0
    keep = _scorable(binary, need_negative=True)
    result = np.full(labels.shape[1], np.nan)
    if keep.any():
        result[keep] = sk_metrics.roc_auc_score(binary[:, keep], scores[:, keep], average=None)
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


def summarize(average_precision: np.ndarray, auroc: np.ndarray, top1: float) -> dict[str, float]:
    """Return cmAP, macro AUROC, top-1 and the number of classes each mean covers."""
    return {
        "cmap": _nanmean(average_precision),
        "auroc": _nanmean(auroc),
        "top1": top1,
        "cmap_classes": float(np.isfinite(average_precision).sum()),
        "auroc_classes": float(np.isfinite(auroc).sum()),
    }


def classification_scores(scores: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Return cmAP, macro AUROC, top-1 and the number of classes each averages over.

    `scores` and `labels` are [examples, classes]; labels are multi-hot.
    """
    return summarize(
        per_class_average_precision(scores, labels),
        per_class_auroc(scores, labels),
        top1_accuracy(scores, labels),
    )


def classification_report(
    scores: np.ndarray, labels: np.ndarray, classes: list[str]
) -> tuple[dict[str, float], pl.DataFrame]:
    """Return the scores of `classification_scores` and the table of `per_class_table`, computed once."""
    average_precision = per_class_average_precision(scores, labels)
    auroc = per_class_auroc(scores, labels)
    table = pl.DataFrame(
        {
            "class": list(classes),
            "positives": (labels > 0).sum(axis=0).astype(np.int64),
            "average_precision": average_precision,
            "auroc": auroc,
        }
    ).with_columns(pl.col("average_precision", "auroc").fill_nan(None))
    return summarize(average_precision, auroc, top1_accuracy(scores, labels)), table


def per_class_table(scores: np.ndarray, labels: np.ndarray, classes: list[str]) -> pl.DataFrame:
    """Return one row per class: positives, average precision and ROC AUC.

    `scores` and `labels` are [examples, classes]; a class without a
    positive (or without a negative, for ROC AUC) has a null score.
    """
    return classification_report(scores, labels, classes)[1]


def mean_and_spread(values: list[float]) -> tuple[float, float]:
    """Return the mean and the sample standard deviation of repeated scores.

    One value has no spread, so its deviation is 0. NaN values (a draw with
    no scorable class) are left out of both.
    """
    finite = np.asarray([value for value in values if np.isfinite(value)], np.float64)
    if finite.size == 0:
        return float("nan"), float("nan")
    if finite.size == 1:
        return float(finite[0]), 0.0
    return float(finite.mean()), float(finite.std(ddof=1))
