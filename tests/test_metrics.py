"""Model metrics on plain arrays, checked against values worked out by hand."""
from __future__ import annotations

import math

import numpy as np
import pytest

from shardlake.training.metrics import auc, binary_metrics, metrics_for, primary_metric, regression_metrics


def test_auc_is_the_share_of_positive_negative_pairs_ranked_right():
    # Pairs (pos, neg): (0.8,0.1) (0.8,0.4) (0.35,0.1) right, (0.35,0.4) wrong -> 3/4.
    assert auc(np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.35, 0.8])) == pytest.approx(0.75)


def test_auc_counts_tied_scores_as_half_right():
    assert auc(np.array([0, 1]), np.array([0.5, 0.5])) == pytest.approx(0.5)


def test_auc_is_undefined_with_one_class_only():
    assert math.isnan(auc(np.array([1, 1]), np.array([0.2, 0.9])))


def test_binary_metrics_count_hits_at_the_threshold():
    labels = np.array([1, 1, 1, 0, 0])
    probabilities = np.array([0.9, 0.6, 0.2, 0.7, 0.1])  # tp=2, fn=1, fp=1, tn=1
    got = binary_metrics(labels, probabilities)
    assert (got["accuracy"], got["precision"], got["recall"]) == pytest.approx((3 / 5, 2 / 3, 2 / 3))


def test_regression_metrics_are_rmse_and_mae():
    got = regression_metrics(np.array([1.0, 2.0, 3.0]), np.array([2.0, 2.0, 0.0]))
    assert (got["rmse"], got["mae"]) == pytest.approx((math.sqrt(10 / 3), 4 / 3))


def test_metrics_for_a_regression_model_report_rmse_and_mae():
    assert set(metrics_for("regression", np.zeros(3), np.ones(3))) == {"rows", "rmse", "mae"}


def test_classification_is_judged_by_auc_upwards_and_regression_by_rmse_downwards():
    assert (primary_metric("binary"), primary_metric("regression")) == (("auc", True), ("rmse", False))
