"""The reduce side of batch inference: combinable aggregates per group, then the figures of each scope.

Every aggregate is a sum, a min or a max (rows, score sums, confusion counts, squared and absolute
errors, a score histogram per label), so Spark combines them map-side per partition and reduces
them per group (shard, split, cohort); each scope's row (one shard, one split, the rows new to
the model, overall) is a combination of groups. Binary AUC comes from the score histogram, exact
up to the bucket width; regression RMSE and MAE from error sums. Comparing them with the model
card is ``transforms.drift``'s.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from shardlake.predictions import PREDICTION, SCORE

BUCKETS = 1000


def with_lineage(scored: DataFrame, model_version: str, table_path: str, table_version: int,
                 logical_date: str) -> DataFrame:
    """Stamp each prediction with the model and the exact source table version, and the run's date."""
    return scored.withColumns({
        "model_version": F.lit(model_version),
        "source_table": F.lit(table_path),
        "source_version": F.lit(table_version).cast("long"),
        "logical_date": F.to_date(F.lit(logical_date)),
    })


def _score_aggs() -> list[Column]:
    """Distribution aggregates of the score that every kind shares (sums, min, max: combinable)."""
    score = F.col(SCORE)
    return [F.count(F.lit(1)).alias("rows"), F.sum(score).alias("score_sum"),
            F.sum(score * score).alias("score_sq_sum"), F.min(score).alias("score_min"),
            F.max(score).alias("score_max")]


def shard_aggregates(predictions: DataFrame, label: str | None, kind: str,
                     groups: Sequence[str] = ("shard",)) -> DataFrame:
    """Per group (``groups``' values; for binary models also per score bucket) the sums the summary is built from.

    Binary: rows, predicted positives and, with labels, labelled rows, positives, correct, tp, fp,
    fn per bucket (the histogram gives AUC). Regression: one row per shard with, with labels, the
    label sum and the squared and absolute error sums. Rows without a label count only in ``rows``.
    """
    aggs = _score_aggs()
    if kind == "binary":
        bucket = F.greatest(F.least(F.floor(F.col(SCORE) * BUCKETS), F.lit(BUCKETS - 1)), F.lit(0)).cast("int")
        aggs.append(F.sum(F.col(PREDICTION).cast("double")).alias("predicted_sum"))
        if label:
            y, p = F.col(label), F.col(PREDICTION)
            aggs += [F.count(y).alias("labelled"), F.sum(y.cast("double")).alias("label_sum"),
                     F.sum((p == y).cast("long")).alias("correct"),
                     F.sum(((p == 1) & (y == 1)).cast("long")).alias("tp"),
                     F.sum(((p == 1) & (y == 0)).cast("long")).alias("fp"),
                     F.sum(((p == 0) & (y == 1)).cast("long")).alias("fn")]
    else:
        bucket = F.lit(0)
        if label:
            y = F.col(label).cast("double")
            error = F.col(PREDICTION) - y
            aggs += [F.count(y).alias("labelled"), F.sum(y).alias("label_sum"),
                     F.sum(error * error).alias("sq_error_sum"), F.sum(F.abs(error)).alias("abs_error_sum")]
    return predictions.groupBy(*[F.col(g) for g in groups], bucket.alias("bucket")).agg(*aggs)


def auc_from_histogram(positives: np.ndarray, negatives: np.ndarray) -> float:
    """AUC from per-bucket label counts (buckets ordered by score); ties within a bucket count half."""
    pos_total, neg_total = positives.sum(), negatives.sum()
    if pos_total == 0 or neg_total == 0:
        return float("nan")
    negatives_below = np.cumsum(negatives) - negatives
    return float((positives * (negatives_below + 0.5 * negatives)).sum() / (pos_total * neg_total))


def _ratio(numerator: float, denominator: float, empty: float = float("nan")) -> float:
    return numerator / denominator if denominator else empty


def _total(rows: Sequence[Mapping], name: str) -> float:
    """Sum of one aggregate over rows; Spark's sum of no non-null values is None, which adds nothing."""
    return sum(r[name] or 0 for r in rows)


def _distribution(rows: Sequence[Mapping]) -> dict:
    """Rows and the score's mean, standard deviation, min and max, combined from the shard sums."""
    n = _total(rows, "rows")
    mean = _ratio(_total(rows, "score_sum"), n)
    variance = _ratio(_total(rows, "score_sq_sum"), n) - mean * mean if n else float("nan")
    minima = [r["score_min"] for r in rows if r["score_min"] is not None]
    maxima = [r["score_max"] for r in rows if r["score_max"] is not None]
    return {"rows": int(n), "mean_score": mean, "score_std": math.sqrt(max(variance, 0.0)) if n else float("nan"),
            "score_min": min(minima) if minima else float("nan"), "score_max": max(maxima) if maxima else float("nan")}


def _binary_metrics(rows: Sequence[Mapping]) -> dict:
    """Label rate, accuracy, precision, recall and histogram AUC over the labelled rows."""
    labelled = _total(rows, "labelled")
    tp, fp, fn = (_total(rows, k) for k in ("tp", "fp", "fn"))
    pos, neg = np.zeros(BUCKETS), np.zeros(BUCKETS)
    for r in rows:
        pos[r["bucket"]] += r["label_sum"] or 0
        neg[r["bucket"]] += (r["labelled"] or 0) - (r["label_sum"] or 0)
    return {"labelled": int(labelled), "label_rate": _ratio(_total(rows, "label_sum"), labelled),
            "accuracy": _ratio(_total(rows, "correct"), labelled),
            "precision": _ratio(tp, tp + fp, 0.0), "recall": _ratio(tp, tp + fn, 0.0),
            "auc": auc_from_histogram(pos, neg)}


def _regression_metrics(rows: Sequence[Mapping]) -> dict:
    """Label mean, RMSE and MAE over the labelled rows."""
    labelled = _total(rows, "labelled")
    mse = _ratio(_total(rows, "sq_error_sum"), labelled)
    return {"labelled": int(labelled), "label_mean": _ratio(_total(rows, "label_sum"), labelled),
            "rmse": math.sqrt(mse) if not math.isnan(mse) else mse,
            "mae": _ratio(_total(rows, "abs_error_sum"), labelled)}


def summarize(aggregates: Sequence[Mapping], kind: str, labelled: bool,
              groups: Sequence[str] = ("shard",)) -> list[dict]:
    """'overall' (first), then one row per value of each of ``groups`` ('shard=3', 'split=test', ...), from the
    collected aggregate rows (small: groups x buckets)."""
    scopes: dict[str, list[Mapping]] = {}
    for row in aggregates:
        for group in groups:
            if row[group] is not None:
                scopes.setdefault(f"{group}={row[group]}", []).append(row)
    scopes["overall"] = list(aggregates)
    out = []
    for scope, rows in sorted(scopes.items(), key=lambda kv: (kv[0] != "overall", kv[0])):
        record = {"scope": scope, **_distribution(rows)}
        if kind == "binary":
            record["predicted_positive_rate"] = _ratio(_total(rows, "predicted_sum"), record["rows"])
        if labelled:
            record.update(_binary_metrics(rows) if kind == "binary" else _regression_metrics(rows))
        out.append(record)
    return out


def label_histogram(aggregates: Sequence[Mapping], label: str | None,
                    bins: int = 40) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Binary score histogram over [0, 1] in ``bins`` bins from the bucket aggregates: per label value, or all rows.

    The plot of every scored row, with no further pass over the data.
    """
    if BUCKETS % bins:
        raise ValueError(f"bins must divide {BUCKETS}, got {bins}")
    edges = np.linspace(0.0, 1.0, bins + 1)
    width = BUCKETS // bins
    series: dict[str, np.ndarray] = {}
    for row in aggregates:
        b = row["bucket"] // width
        if label is None:
            parts = {"all rows": row["rows"]}
        else:
            positives = row["label_sum"] or 0
            parts = {f"{label}=0": (row["labelled"] or 0) - positives, f"{label}=1": positives}
            if row["rows"] - (row["labelled"] or 0):
                parts["unlabelled"] = row["rows"] - (row["labelled"] or 0)
        for name, count in parts.items():
            series.setdefault(name, np.zeros(bins))[b] += count
    return edges, dict(sorted(series.items()))
