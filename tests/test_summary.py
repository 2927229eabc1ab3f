"""The reduce stage's transforms: combinable aggregates per group, the summary per scope, lineage."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from pyspark.sql import functions as F
from pyspark.sql import types as T
from pyspark.testing import assertDataFrameEqual

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
    records = S.summarize(aggregates, kind, labelled=label is not None)
    scopes = [r["scope"] for r in records]
    assert len(set(scopes)) == len(scopes), f"a scope summarised twice: {scopes}"
    return {r["scope"]: r for r in records}


def _scopes(data: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    return [("overall", data), *[(f"shard={s}", g) for s, g in data.groupby("shard")]]


# Independent oracles: the metrics computed from their definitions with numpy, row by row (no
# histogram, no sums combined across shards), never with shardlake's own metric code.

def _pairwise_auc(y: np.ndarray, score: np.ndarray) -> float:
    """AUC from its definition: over every (positive, negative) pair, 1 if the positive scores higher, 1/2 on a tie."""
    diff = score[y == 1][:, None] - score[y == 0][None, :]
    return float(np.mean((diff > 0) + 0.5 * (diff == 0)))


def _distribution(score: np.ndarray) -> dict:
    return {"rows": len(score), "mean_score": score.mean(), "score_std": score.std(ddof=0),
            "score_min": score.min(), "score_max": score.max()}


def _binary_oracle(rows: pd.DataFrame) -> dict:
    """What the summary of these rows must say; the label metrics over the labelled rows only."""
    score, prediction = rows["score"].to_numpy(), rows["prediction"].to_numpy()
    expected = {**_distribution(score), "predicted_positive_rate": prediction.mean()}
    labelled = rows["y"].notna().to_numpy()
    y, p = rows["y"].to_numpy()[labelled], prediction[labelled]
    tp, fp, fn = np.sum((p == 1) & (y == 1)), np.sum((p == 1) & (y == 0)), np.sum((p == 0) & (y == 1))
    return {**expected, "labelled": int(labelled.sum()), "label_rate": y.mean(), "accuracy": np.mean(p == y), "precision": tp / (tp + fp),
            "recall": tp / (tp + fn), "auc": _pairwise_auc(y, score[labelled])}


def _regression_oracle(rows: pd.DataFrame) -> dict:
    y, prediction = rows["y"].to_numpy(), rows["prediction"].to_numpy()
    error = prediction - y
    return {**_distribution(rows["score"].to_numpy()), "labelled": len(y), "label_mean": y.mean(),
            "rmse": np.sqrt(np.mean(error ** 2)), "mae": np.mean(np.abs(error))}


def _assert_matches(got: dict, expected: dict, scope: str) -> None:
    """Every figure of one summary row, and no other; AUC exact up to the histogram's bucket width."""
    assert sorted(got) == sorted(["scope", *expected]), scope
    for name, value in expected.items():
        tolerance = {"abs": 2e-3} if name == "auc" else {}
        assert got[name] == pytest.approx(value, **tolerance), (scope, name)


def test_summary_has_the_overall_row_first_then_one_row_per_shard(spark):
    frame = spark.createDataFrame(_binary(), SCHEMA)
    aggregates = [r.asDict() for r in S.shard_aggregates(frame, "y", "binary").collect()]
    records = S.summarize(aggregates, "binary", labelled=True)
    assert [(r["scope"], r["rows"]) for r in records] == [("overall", 600), ("shard=0", 200), ("shard=1", 200),
                                                          ("shard=2", 200)]


def test_summary_has_a_row_per_value_of_each_group(spark):
    data = _binary().assign(split=lambda d: np.where(d["id"] % 5 == 0, "test", "train"))
    frame = spark.createDataFrame(data, T.StructType([*SCHEMA.fields, T.StructField("split", T.StringType())]))
    aggregates = [r.asDict() for r in S.shard_aggregates(frame, "y", "binary", ["shard", "split"]).collect()]
    summary = {r["scope"]: r for r in S.summarize(aggregates, "binary", labelled=True, groups=["shard", "split"])}
    assert sorted(summary) == ["overall", "shard=0", "shard=1", "shard=2", "split=test", "split=train"]
    _assert_matches(summary["split=test"], _binary_oracle(data[data["split"] == "test"]), "split=test")


def test_binary_summary_matches_direct_metrics_overall_and_per_shard(spark):
    data = _binary()
    summary = _summary(spark, data, "binary")
    assert sorted(summary) == sorted(scope for scope, _ in _scopes(data))
    for scope, rows in _scopes(data):
        _assert_matches(summary[scope], _binary_oracle(rows), scope)


def test_regression_summary_has_rmse_and_mae_per_shard(spark):
    data = _regression()
    summary = _summary(spark, data, "regression")
    assert sorted(summary) == sorted(scope for scope, _ in _scopes(data))
    for scope, rows in _scopes(data):
        _assert_matches(summary[scope], _regression_oracle(rows), scope)


def test_regression_overall_combines_error_sums_not_shard_rmses(spark):
    data = _regression()
    overall = _summary(spark, data, "regression")["overall"]
    direct = _regression_oracle(data)["rmse"]
    mean_of_shards = np.mean([_regression_oracle(g)["rmse"] for _, g in data.groupby("shard")])
    assert mean_of_shards != pytest.approx(direct, rel=1e-3)  # the data tells the two apart
    assert overall["rmse"] == pytest.approx(direct)


def test_unlabelled_rows_count_in_rows_but_not_in_metrics(spark):
    data = _binary()
    unlabelled = data.copy()
    unlabelled.loc[::2, "y"] = None
    summary = _summary(spark, unlabelled, "binary")["overall"]
    expected = _binary_oracle(unlabelled)
    assert expected["rows"] == 600 and expected["label_rate"] == data["y"][1::2].mean()  # the oracle's own check
    _assert_matches(summary, expected, "overall")


def test_summary_without_labels_has_the_distribution_only(spark):
    data = _binary()
    summary = _summary(spark, data, "binary", label=None)["overall"]
    expected = {**_distribution(data["score"].to_numpy()), "predicted_positive_rate": data["prediction"].mean()}
    _assert_matches(summary, expected, "overall")


def test_label_histogram_rebins_the_buckets_per_label():
    aggregates = [{"bucket": 0, "rows": 5, "labelled": 4, "label_sum": 1},
                  {"bucket": 24, "rows": 2, "labelled": 2, "label_sum": 2},
                  {"bucket": 999, "rows": 3, "labelled": 3, "label_sum": 0}]
    edges, series = S.label_histogram(aggregates, "y", bins=40)
    # 40 bins of 25 buckets: buckets 0 and 24 fall in bin 0, bucket 999 in bin 39.
    expected = {"unlabelled": {0: 1}, "y=0": {0: 3 + 0, 39: 3}, "y=1": {0: 1 + 2}}
    np.testing.assert_allclose(edges, np.arange(41) / 40, rtol=0, atol=1e-12)
    assert list(series) == list(expected)
    for name, counts in expected.items():
        want = np.zeros(40)
        want[list(counts)] = list(counts.values())
        np.testing.assert_array_equal(series[name], want, err_msg=name)


def test_lineage_stamps_the_given_logical_date_and_versions(spark):
    scored = spark.createDataFrame([(1, 0.3)], "id int, score double")
    stamped = S.with_lineage(scored, "m-1", "/lake/t", 7, "2024-03-05")
    expected = spark.createDataFrame([(1, 0.3, "m-1", "/lake/t", 7, "2024-03-05")],
                                     "id int, score double, model_version string, source_table string, "
                                     "source_version long, logical_date string")
    assertDataFrameEqual(stamped, expected.withColumn("logical_date", F.to_date("logical_date")))


def test_the_reduce_stage_transforms_load_without_torch():
    import subprocess
    import sys

    code = "import sys, shardlake.transforms.summary, shardlake.transforms.incremental; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout == "False\n"
