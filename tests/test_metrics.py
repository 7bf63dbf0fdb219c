"""Metrics on small hand-made cases with known values."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pipeline import metrics


def test_average_precision_hand_case():
    # Ranked scores 0.9 (positive), 0.8 (negative), 0.1 (positive): the
    # precision at the two positives is 1/1 and 2/3.
    scores = np.array([[0.9], [0.8], [0.1]])
    labels = np.array([[1], [0], [1]])

    result = metrics.per_class_average_precision(scores, labels)

    assert result[0] == pytest.approx((1.0 + 2.0 / 3.0) / 2.0)


def test_auroc_hand_case():
    # Positive-negative pairs: (0.9 vs 0.8) is ordered, (0.1 vs 0.8) is not.
    scores = np.array([[0.9], [0.8], [0.1]])
    labels = np.array([[1], [0], [1]])

    result = metrics.per_class_auroc(scores, labels)

    assert result[0] == pytest.approx(0.5)


def test_perfect_and_reversed_rankings():
    labels = np.array([[1, 1], [1, 1], [0, 0], [0, 0]])
    scores = np.array([[4.0, 1.0], [3.0, 2.0], [2.0, 3.0], [1.0, 4.0]])

    average_precision = metrics.per_class_average_precision(scores, labels)
    auroc = metrics.per_class_auroc(scores, labels)

    assert average_precision[0] == pytest.approx(1.0)
    assert auroc[0] == pytest.approx(1.0)
    assert auroc[1] == pytest.approx(0.0)
    # Reversed: positives at ranks 3 and 4, so precision 1/3 and 2/4.
    assert average_precision[1] == pytest.approx((1 / 3 + 2 / 4) / 2)


def test_class_without_positive_is_excluded_and_counted():
    scores = np.array([[0.9, 0.1, 0.5], [0.2, 0.8, 0.5], [0.7, 0.3, 0.5]])
    labels = np.array([[1, 0, 0], [0, 1, 0], [1, 0, 0]])

    result = metrics.classification_scores(scores, labels)

    assert result["cmap_classes"] == 2
    assert result["auroc_classes"] == 2
    assert result["cmap"] == pytest.approx(1.0)
    assert result["auroc"] == pytest.approx(1.0)


def test_all_positive_class_has_no_auroc():
    scores = np.array([[0.9, 0.1], [0.2, 0.8]])
    labels = np.array([[1, 1], [0, 1]])

    average_precision = metrics.per_class_average_precision(scores, labels)
    auroc = metrics.per_class_auroc(scores, labels)

    assert average_precision[1] == pytest.approx(1.0)
    assert math.isnan(auroc[1])
    assert auroc[0] == pytest.approx(1.0)


def test_no_scorable_class_gives_nan_not_error():
    scores = np.array([[0.9, 0.1], [0.2, 0.8]])
    labels = np.zeros((2, 2))

    result = metrics.classification_scores(scores, labels)

    assert math.isnan(result["cmap"])
    assert math.isnan(result["auroc"])
    assert math.isnan(result["top1"])
    assert result["cmap_classes"] == 0


@pytest.mark.parametrize(
    ("scores", "labels", "expected"),
    [
        ([[0.9, 0.1], [0.2, 0.8]], [[1, 0], [0, 1]], 1.0),
        ([[0.9, 0.1], [0.2, 0.8]], [[0, 1], [1, 0]], 0.0),
        ([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]], [[1, 0], [1, 0], [0, 1]], 1 / 3),
        # A row without a positive is left out of top-1.
        ([[0.9, 0.1], [0.2, 0.8]], [[1, 0], [0, 0]], 1.0),
        # With several positives, any of them counts as a hit.
        ([[0.1, 0.9, 0.0]], [[1, 1, 0]], 1.0),
    ],
)
def test_top1_accuracy_cases(scores, labels, expected):
    assert metrics.top1_accuracy(np.array(scores), np.array(labels)) == pytest.approx(expected)


def test_per_class_table_matches_scores():
    scores = np.array([[0.9, 0.1, 0.5], [0.8, 0.7, 0.5], [0.1, 0.3, 0.5]])
    labels = np.array([[1, 0, 0], [0, 1, 0], [1, 0, 0]])

    summary, table = metrics.classification_report(scores, labels, ["a", "b", "c"])

    assert table["class"].to_list() == ["a", "b", "c"]
    assert table["positives"].to_list() == [2, 1, 0]
    assert table["average_precision"][0] == pytest.approx((1.0 + 2.0 / 3.0) / 2.0)
    assert table["average_precision"][2] is None
    assert table["auroc"][2] is None
    assert summary == metrics.classification_scores(scores, labels)


@pytest.mark.parametrize(
    ("values", "mean", "spread"),
    [
        ([1.0, 2.0, 3.0], 2.0, 1.0),
        ([0.5], 0.5, 0.0),
        ([1.0, float("nan"), 3.0], 2.0, math.sqrt(2.0)),
    ],
)
def test_mean_and_spread_cases(values, mean, spread):
    result = metrics.mean_and_spread(values)

    assert result[0] == pytest.approx(mean)
    assert result[1] == pytest.approx(spread)


def test_mean_and_spread_of_nothing_is_nan():
    mean, spread = metrics.mean_and_spread([float("nan")])

    assert math.isnan(mean)
    assert math.isnan(spread)
