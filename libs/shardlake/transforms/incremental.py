"""Which source rows a model version still has to score, and which predictions describe a table version."""
from __future__ import annotations

from collections.abc import Sequence

from pyspark.sql import DataFrame
from pyspark.sql import functions as F


def _key_match(key: Sequence[str], left: str, right: str):
    """Null-safe equality on every key column (the MERGE matches keys the same way)."""
    condition = F.lit(True)
    for column in key:
        condition = condition & F.col(f"{left}.{column}").eqNullSafe(F.col(f"{right}.{column}"))
    return condition


def unscored(source: DataFrame, predictions: DataFrame, key: Sequence[str], model_version: str) -> DataFrame:
    """Source rows whose key has no prediction from ``model_version`` yet: what an incremental run scores.

    An anti-join against the predictions table rather than a diff of source versions, so a run
    that died before its commit, or a skipped day, is caught up by the next run.
    """
    done = predictions.where(F.col("model_version") == F.lit(model_version)).select(*[F.col(k) for k in key])
    return (source.alias("s")
            .join(done.alias("p"), on=_key_match(key, "s", "p"), how="left_anti")
            .select(*[F.col(f"s.{c}").alias(c) for c in source.columns]))


def for_source(predictions: DataFrame, source: DataFrame, key: Sequence[str], model_version: str) -> DataFrame:
    """The model version's predictions for exactly the keys in ``source`` (one table version).

    Rows scored by an earlier run from an earlier version count when their key is still there;
    keys that have left the table do not.
    """
    keys = source.select(*[F.col(k) for k in key])
    mine = predictions.where(F.col("model_version") == F.lit(model_version))
    return (mine.alias("p")
            .join(keys.alias("s"), on=_key_match(key, "p", "s"), how="left_semi")
            .select(*[F.col(f"p.{c}").alias(c) for c in predictions.columns]))
