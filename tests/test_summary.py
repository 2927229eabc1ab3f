"""The reduce stage's transforms: combinable per-shard aggregates, the summary, drift, lineage, incremental keys."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from pyspark.sql import functions as F
from pyspark.sql import types as T
from pyspark.testing import assertDataFrameEqual

from shardlake.training.metrics import binary_metrics, regression_metrics
from shardlake.transforms import incremental as I
from shardlake.transforms import summary as S

SCHEMA = T.StructType([T.StructField("id", T.IntegerType()), T.StructField("shard", T.IntegerType()),
                       T.StructField("prediction", T.DoubleType()), T.StructField("score", T.DoubleType()),
                       T.StructField("y", T.DoubleType())])


def _binary(n: int = 600, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n).astype(float)
    score = np.clip(0.35 * y + rng.uniform(0, 0.65, n), 0, 1)
    return pd.DataFrame({"id": np.arange(n, dtype=np.int32), "shard": (np.arange(n) % 3).astype(np.int32),
                         "prediction": (score >= 0.5).astype(float), "score": score, "y": y})


def _regression(n: int = 600, seed: int = 1) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    y = rng.normal(10, 30, n)
    prediction = y + rng.normal(0, 5 + np.arange(n) % 3 * 5, n)  # each shard a different error level
    return pd.DataFrame({"id": np.arange(n, dtype=np.int32), "shard": (np.arange(n) % 3).astype(np.int32),
                         "prediction": prediction, "score": prediction, "y": y})


def _summary(spark, data: pd.DataFrame, kind: str, label: str | None = "y") -> dict[str, dict]:
    frame = spark.createDataFrame(data, SCHEMA)
    aggregates = [r.asDict() for r in S.shard_aggregates(frame, label, kind).collect()]
    return {r["scope"]: r for r in S.summarize(aggregates, kind, labelled=label is not None)}


def test_binary_summary_matches_direct_metrics_overall_and_per_shard(spark):
    data = _binary()
    summary = _summary(spark, data, "binary")
    for scope, rows in [("overall", data), *[(f"shard={s}", g) for s, g in data.groupby("shard")]]:
        expected = binary_metrics(rows["y"].to_numpy(), rows["score"].to_numpy())
        got = summary[scope]
        assert got["rows"] == len(rows)
        for name in ("accuracy", "precision", "recall"):
            assert got[name] == pytest.approx(expected[name]), (scope, name)
        assert got["auc"] == pytest.approx(expected["auc"], abs=2e-3)  # exact up to the bucket width
        assert got["mean_score"] == pytest.approx(rows["score"].mean())
        assert got["score_std"] == pytest.approx(rows["score"].std(ddof=0))


def test_regression_summary_has_rmse_and_mae_per_shard(spark):
    data = _regression()
    summary = _summary(spark, data, "regression")
    for scope, rows in [("overall", data), *[(f"shard={s}", g) for s, g in data.groupby("shard")]]:
        expected = regression_metrics(rows["y"].to_numpy(), rows["prediction"].to_numpy())
        got = summary[scope]
        assert (got["rmse"], got["mae"]) == (pytest.approx(expected["rmse"]), pytest.approx(expected["mae"])), scope
        assert got["label_mean"] == pytest.approx(rows["y"].mean())
        assert (got["score_min"], got["score_max"]) == (rows["prediction"].min(), rows["prediction"].max())
        assert "auc" not in got and "predicted_positive_rate" not in got


def test_regression_overall_combines_error_sums_not_shard_rmses(spark):
    summary = _summary(spark, _regression(), "regression")
    shards = [v for k, v in summary.items() if k != "overall"]
    combined = math.sqrt(sum(s["rmse"] ** 2 * s["rows"] for s in shards) / sum(s["rows"] for s in shards))
    assert summary["overall"]["rmse"] == pytest.approx(combined)
    assert summary["overall"]["rmse"] != pytest.approx(np.mean([s["rmse"] for s in shards]), rel=1e-3)


def test_unlabelled_rows_count_in_rows_but_not_in_metrics(spark):
    data = _binary()
    unlabelled = data.copy()
    unlabelled.loc[::2, "y"] = None
    summary = _summary(spark, unlabelled, "binary")["overall"]
    expected = binary_metrics(data["y"][1::2].to_numpy(), data["score"][1::2].to_numpy())
    assert summary["rows"] == len(data)
    assert summary["accuracy"] == pytest.approx(expected["accuracy"])
    assert summary["label_rate"] == pytest.approx(data["y"][1::2].mean())


def test_summary_without_labels_has_the_distribution_only(spark):
    summary = _summary(spark, _binary(), "binary", label=None)["overall"]
    assert set(summary) == {"scope", "rows", "mean_score", "score_std", "score_min", "score_max",
                            "predicted_positive_rate"}


def test_drift_flags_rates_beyond_an_absolute_tolerance():
    flagged = S.drift({"auc": 0.70, "accuracy": 0.78}, {"auc": 0.76, "accuracy": 0.79}, 0.05, "binary")
    assert list(flagged) == ["auc"]
    assert flagged["auc"]["change"] == pytest.approx(-0.06)


def test_drift_flags_errors_beyond_a_relative_tolerance():
    flagged = S.drift({"rmse": 33.0, "mae": 20.5}, {"rmse": 30.0, "mae": 20.0}, 0.05, "regression")
    assert list(flagged) == ["rmse"]  # +10% against an allowed 5%; MAE moved 2.5%
    assert flagged["rmse"]["allowed"] == pytest.approx(1.5)


def test_drift_compares_only_metrics_on_both_sides_and_never_flags_nan():
    compared = S.compare_with_test({"auc": float("nan"), "accuracy": 0.5}, {"auc": 0.7}, 0.05, "binary")
    assert list(compared) == ["auc"] and compared["auc"]["drifted"] is False


def test_label_histogram_rebins_the_buckets_per_label():
    aggregates = [{"bucket": 0, "rows": 5, "labelled": 4, "label_sum": 1},
                  {"bucket": 24, "rows": 2, "labelled": 2, "label_sum": 2},
                  {"bucket": 999, "rows": 3, "labelled": 3, "label_sum": 0}]
    edges, series = S.label_histogram(aggregates, "y", bins=40)
    assert len(edges) == 41 and edges[0] == 0.0 and edges[-1] == 1.0
    assert series["y=1"][0] == 3 and series["y=0"][0] == 3 and series["y=0"][39] == 3
    assert series["unlabelled"].sum() == 1


def test_lineage_stamps_the_given_logical_date_and_versions(spark):
    scored = spark.createDataFrame([(1, 0.3)], "id int, score double")
    stamped = S.with_lineage(scored, "m-1", "/lake/t", 7, "2024-03-05")
    expected = spark.createDataFrame([(1, 0.3, "m-1", "/lake/t", 7, "2024-03-05")],
                                     "id int, score double, model_version string, source_table string, "
                                     "source_version long, logical_date string")
    assertDataFrameEqual(stamped, expected.withColumn("logical_date", F.to_date("logical_date")))


def test_unscored_keeps_only_keys_without_a_prediction_of_that_model(spark):
    source = spark.createDataFrame([(1, "a", 1.0), (2, "b", 2.0), (3, None, 3.0), (4, "d", 4.0)],
                                   "k int, c string, x double")
    predictions = spark.createDataFrame([(1, "a", "m1"), (3, None, "m1"), (4, "d", "m2")],
                                        "k int, c string, model_version string")
    expected = spark.createDataFrame([(2, "b", 2.0), (4, "d", 4.0)], "k int, c string, x double")
    assertDataFrameEqual(I.unscored(source, predictions, ["k", "c"], "m1"), expected)


def test_for_source_keeps_the_model_predictions_of_keys_still_in_the_table(spark):
    source = spark.createDataFrame([(1, 1.0), (2, 2.0)], "k int, x double")
    predictions = spark.createDataFrame([(1, 0.1, "m1"), (2, 0.2, "m2"), (9, 0.9, "m1")],
                                        "k int, score double, model_version string")
    expected = spark.createDataFrame([(1, 0.1, "m1")], "k int, score double, model_version string")
    assertDataFrameEqual(I.for_source(predictions, source, ["k"], "m1"), expected)
