"""Which source rows a model version still has to score, and which predictions describe a table version.

A prediction is matched to a source row by key and by the row's content hash (the clean table's
``_row_hash``, carried on each prediction as ``source_row_hash``): a row the ingest changed in
place has a new hash, so it counts as not scored yet.
"""
from __future__ import annotations

from collections.abc import Sequence

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F


def _row_match(key: Sequence[str], hashes: tuple[str, str], left: str, right: str) -> Column:
    """Null-safe equality on every key column (the MERGE matches keys the same way), and equal hashes.

    A missing hash (a prediction written before predictions carried one) matches nothing.
    """
    condition = F.col(f"{left}.{hashes[0]}") == F.col(f"{right}.{hashes[1]}")
    for column in key:
        condition = condition & F.col(f"{left}.{column}").eqNullSafe(F.col(f"{right}.{column}"))
    return condition


def unscored(source: DataFrame, predictions: DataFrame, key: Sequence[str], model_version: str,
             source_hash: str, prediction_hash: str) -> DataFrame:
    """Source rows that ``model_version`` has no prediction of, as they are now: new keys and changed rows.

    An anti-join against the predictions table rather than a diff of source versions, so a run
    that died before its commit, or a skipped day, is caught up by the next run.
    """
    done = predictions.where(F.col("model_version") == F.lit(model_version)).select(*key, prediction_hash)
    return (source.alias("s")
            .join(done.alias("p"), on=_row_match(key, (source_hash, prediction_hash), "s", "p"), how="left_anti")
            .select(*[F.col(f"s.{c}").alias(c) for c in source.columns]))


def for_source(predictions: DataFrame, source: DataFrame, key: Sequence[str], model_version: str,
               source_hash: str, prediction_hash: str, carry: Sequence[str] = ()) -> DataFrame:
    """The model version's predictions of exactly the rows in ``source`` (one table version), with the
    ``carry`` columns of the source row alongside.

    Rows scored by an earlier run from an earlier version count when the row is still there
    unchanged; keys that have left the table, and predictions of a row's older content, do not.
    """
    rows = source.select(*key, source_hash, *carry)
    mine = predictions.where(F.col("model_version") == F.lit(model_version))
    return (mine.alias("p")
            .join(rows.alias("s"), on=_row_match(key, (prediction_hash, source_hash), "p", "s"), how="inner")
            .select(*[F.col(f"p.{c}").alias(c) for c in predictions.columns], *[F.col(f"s.{c}") for c in carry]))


def mark_new(source: DataFrame, trained_on: DataFrame | None, key: Sequence[str], row_hash: str,
             column: str = "cohort") -> DataFrame:
    """``source`` with ``column``: 'seen' for a row the model's training version held as it is, else 'new'.

    ``trained_on`` None: the source is the training version itself (every row seen). A row whose
    content changed since has another hash, so it is new to the model too.
    """
    if trained_on is None:
        return source.withColumn(column, F.lit("seen"))
    seen = trained_on.select(*key, row_hash).withColumn("_seen", F.lit(True))
    marked = source.alias("s").join(seen.alias("t"), on=_row_match(key, (row_hash, row_hash), "s", "t"), how="left")
    return marked.select(*[F.col(f"s.{c}").alias(c) for c in source.columns],
                         F.when(F.col("t._seen"), F.lit("seen")).otherwise(F.lit("new")).alias(column))
