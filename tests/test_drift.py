"""Drift like for like: the sanity check on the training version's test split, and one-sided, sample-sized
comparisons of the rows new to the model with the card's test metrics."""
from __future__ import annotations

import math

import numpy as np
import pytest

from shardlake.transforms import drift as D


def test_new_rows_worse_than_the_card_beyond_the_tolerance_drift():
    compared = D.compare_new_rows({"auc": 0.70, "accuracy": 0.78, "labelled": 10**6, "label_rate": 0.3},
                                  {"auc": 0.76, "accuracy": 0.79}, 0.05, "binary", z=2.0)
    assert {k: v["drifted"] for k, v in compared.items()} == {"auc": True, "accuracy": False}


def test_new_rows_better_than_the_card_never_drift():
    compared = D.compare_new_rows({"rmse": 0.135, "mae": 0.09, "labelled": 10**6}, {"rmse": 0.189, "mae": 0.12},
                                  0.05, "regression", z=2.0)
    assert [v["drifted"] for v in compared.values()] == [False, False]


def test_errors_drift_beyond_a_relative_tolerance():
    compared = D.compare_new_rows({"rmse": 33.0, "mae": 20.5, "labelled": 10**6}, {"rmse": 30.0, "mae": 20.0},
                                  0.05, "regression", z=2.0)
    assert ({k: v["drifted"] for k, v in compared.items()}, compared["rmse"]["allowed"]) == (
        {"rmse": True, "mae": False}, pytest.approx(1.5))


def test_a_small_sample_is_allowed_its_noise():
    # 0.06 worse, beyond the 0.05 tolerance, but on 50 rows AUC's standard error is far larger.
    record = {"auc": 0.70, "labelled": 50, "label_rate": 0.5}
    compared = D.compare_new_rows(record, {"auc": 0.76}, 0.05, "binary", z=2.0)["auc"]
    assert (compared["drifted"], compared["allowed"]) == (False, pytest.approx(2 * D.standard_error("auc", record)))


def test_the_accuracy_standard_error_is_the_binomial_one_checked_by_simulation():
    rng = np.random.default_rng(0)
    accuracies = rng.binomial(400, 0.8, 20000) / 400
    assert D.standard_error("accuracy", {"accuracy": 0.8, "labelled": 400}) == pytest.approx(accuracies.std(), rel=0.03)


def test_the_auc_standard_error_matches_a_simulation():
    rng = np.random.default_rng(1)

    def auc_once() -> float:
        positive, negative = rng.normal(1.0, 1.0, 100), rng.normal(0.0, 1.0, 100)
        return float(np.mean(positive[:, None] > negative[None, :]))

    simulated = np.array([auc_once() for _ in range(2000)])
    record = {"auc": float(simulated.mean()), "labelled": 200, "label_rate": 0.5}
    assert D.standard_error("auc", record) == pytest.approx(simulated.std(), rel=0.15)


def test_a_metric_that_is_nan_is_reported_and_never_flagged():
    compared = D.compare_new_rows({"auc": float("nan"), "accuracy": 0.5, "labelled": 10}, {"auc": 0.7}, 0.05,
                                  "binary", z=2.0)
    assert list(compared) == ["auc"] and compared["auc"]["drifted"] is False


def test_the_sanity_check_passes_when_the_test_split_reproduces_the_card():
    checked = D.sanity_check({"auc": 0.7312, "accuracy": 0.66}, {"auc": 0.7301, "accuracy": 0.66}, "binary")
    assert [v["failed"] for v in checked.values()] == [False, False]


def test_the_sanity_check_fails_when_the_test_split_does_not_reproduce_the_card():
    checked = D.sanity_check({"rmse": 0.135, "mae": 0.1}, {"rmse": 0.189, "mae": 0.1}, "regression")
    assert {k: v["failed"] for k, v in checked.items()} == {"rmse": True, "mae": False}


def test_the_sanity_check_accepts_an_auc_undefined_on_both_sides():
    checked = D.sanity_check({"auc": math.nan}, {"auc": math.nan}, "binary")
    assert checked["auc"]["failed"] is False


def test_psi_of_identical_distributions_is_zero_and_of_a_known_shift_its_formula():
    expected, actual = [0, 50, 30, 20], [0, 30, 30, 40]
    by_hand = (0.3 - 0.5) * math.log(0.3 / 0.5) + (0.4 - 0.2) * math.log(0.4 / 0.2)
    assert (D.psi(expected, expected), D.psi(expected, actual)) == (0.0, pytest.approx(by_hand))


def test_binned_ks_is_the_largest_gap_between_the_cumulative_shares():
    # Cumulative shares 0.5, 0.8, 1.0 against 0.3, 0.6, 1.0: the gap is 0.2 at both of the first two.
    assert D.ks_binned([50, 30, 20], [30, 30, 40]) == pytest.approx(0.2)


def _reference(counts, ordered=True):
    return {"x": {"counts": counts, "ordered": ordered}}


def test_a_shifted_numeric_distribution_drifts_and_an_unshifted_one_does_not():
    reference = _reference([0, 2500, 2500, 2500, 2500])
    moved = D.compare_distributions(reference, {"x": [0, 500, 1500, 3000, 5000]}, 0.2)["x"]
    same = D.compare_distributions(reference, {"x": [0, 2480, 2530, 2490, 2500]}, 0.2)["x"]
    assert (moved["drifted"], same["drifted"]) == (True, False)


def test_a_small_sample_is_allowed_its_sampling_noise_in_ks():
    # 5 rows that all fall in the upper half: a KS of 0.5, but below the critical value at m = 5 (0.61).
    check = D.compare_distributions(_reference([0, 5000, 5000]), {"x": [0, 0, 5]}, psi_threshold=100.0)["x"]
    assert (check["ks"], check["drifted"]) == (pytest.approx(0.5), False)


def test_categories_are_compared_by_psi_only():
    check = D.compare_distributions(_reference([0, 100, 100], ordered=False), {"x": [0, 100, 100]}, 0.2)["x"]
    assert "ks" not in check and check["drifted"] is False
