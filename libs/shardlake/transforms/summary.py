"""The reduce side of batch inference: combinable per-shard aggregates, then the overall figures.

Every aggregate is a sum (rows, confusion counts, score histogram per label), so Spark combines
them map-side per partition and reduces them per shard; the overall row is the sum of the shards.
AUC comes from the score histogram, exact up to the bucket width.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from shardlake.scoring import PREDICTION, SCORE

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


def shard_histograms(predictions: DataFrame, label: str | None, shard: str = "shard") -> DataFrame:
    """Per shard and score bucket: rows, positives predicted, and (with labels) positives/negatives."""
    bucket = F.greatest(F.least(F.floor(F.col(SCORE) * BUCKETS), F.lit(BUCKETS - 1)), F.lit(0)).cast("int")
    aggs = [F.count(F.lit(1)).alias("rows"), F.sum(F.col(SCORE)).alias("score_sum"),
            F.sum(F.col(PREDICTION).cast("double")).alias("predicted_sum")]
    if label:
        aggs += [F.sum(F.col(label).cast("double")).alias("label_sum"),
                 F.sum((F.col(PREDICTION) == F.col(label)).cast("long")).alias("correct"),
                 F.sum(((F.col(PREDICTION) == 1) & (F.col(label) == 1)).cast("long")).alias("tp"),
                 F.sum(((F.col(PREDICTION) == 1) & (F.col(label) == 0)).cast("long")).alias("fp"),
                 F.sum(((F.col(PREDICTION) == 0) & (F.col(label) == 1)).cast("long")).alias("fn")]
    return predictions.groupBy(F.col(shard).alias("shard"), bucket.alias("bucket")).agg(*aggs)


def auc_from_histogram(positives: np.ndarray, negatives: np.ndarray) -> float:
    """AUC from per-bucket label counts (buckets ordered by score); ties within a bucket count half."""
    pos_total, neg_total = positives.sum(), negatives.sum()
    if pos_total == 0 or neg_total == 0:
        return float("nan")
    negatives_below = np.cumsum(negatives) - negatives
    return float((positives * (negatives_below + 0.5 * negatives)).sum() / (pos_total * neg_total))


def summarize(histograms: Sequence[Mapping], labelled: bool) -> list[dict]:
    """One row per shard plus 'overall' from the collected histogram rows (small: shards x buckets)."""
    scopes: dict[str, list[Mapping]] = {}
    for row in histograms:
        scopes.setdefault(f"shard={row['shard']}", []).append(row)
    scopes["overall"] = list(histograms)
    out = []
    for scope, rows in sorted(scopes.items(), key=lambda kv: (kv[0] != "overall", kv[0])):
        total = sum(r["rows"] for r in rows)
        record = {"scope": scope, "rows": int(total),
                  "mean_score": sum(r["score_sum"] for r in rows) / total if total else float("nan"),
                  "predicted_positive_rate": sum(r["predicted_sum"] for r in rows) / total if total else float("nan")}
        if labelled:
            tp, fp, fn = (sum(r[k] for r in rows) for k in ("tp", "fp", "fn"))
            pos = np.zeros(BUCKETS)
            neg = np.zeros(BUCKETS)
            for r in rows:
                pos[r["bucket"]] += r["label_sum"]
                neg[r["bucket"]] += r["rows"] - r["label_sum"]
            record.update({
                "label_rate": sum(r["label_sum"] for r in rows) / total if total else float("nan"),
                "accuracy": sum(r["correct"] for r in rows) / total if total else float("nan"),
                "precision": tp / (tp + fp) if tp + fp else 0.0,
                "recall": tp / (tp + fn) if tp + fn else 0.0,
                "auc": auc_from_histogram(pos, neg),
            })
        out.append(record)
    return out


def drift(overall: Mapping, test_metrics: Mapping, tolerance: float, names: Sequence[str] = ("auc", "accuracy")) -> dict:
    """Metrics whose value moved more than ``tolerance`` from the model card's test metrics."""
    flagged = {}
    for name in names:
        if name in overall and name in test_metrics and abs(overall[name] - test_metrics[name]) > tolerance:
            flagged[name] = {"now": overall[name], "at_test": test_metrics[name]}
    return flagged
