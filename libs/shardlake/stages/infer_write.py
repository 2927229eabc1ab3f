"""The inference stage's writes: predictions by one MERGE per run, the summary by one replaceWhere per run.

Predictions are keyed by (key, model version) and carry the content hash of the clean row they
were scored from (``source_row_hash``), so a row the ingest changed in place is told apart from
one already scored. Each write is idempotent and finds its own commit by the run token it puts
in the commit metadata, never by "the latest version".
"""
from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping, Sequence

from delta.tables import DeltaTable
from pyspark.errors import AnalysisException
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from shardlake import delta_io, delta_log
from shardlake.predictions import PREDICTION, SCORE, SOURCE_ROW_HASH

# Two scorings of the same row may differ in the last float bits (BLAS blocking depends on the
# batch a row lands in); only a larger change is a new prediction worth a rewrite.
SCORE_TOLERANCE = 1e-6

SUMMARY_FIELDS = [
    ("scope", T.StringType()), ("rows", T.LongType()), ("mean_score", T.DoubleType()),
    ("predicted_positive_rate", T.DoubleType()), ("label_rate", T.DoubleType()), ("accuracy", T.DoubleType()),
    ("precision", T.DoubleType()), ("recall", T.DoubleType()), ("auc", T.DoubleType()),
    ("score_std", T.DoubleType()), ("score_min", T.DoubleType()), ("score_max", T.DoubleType()),
    ("label_mean", T.DoubleType()), ("rmse", T.DoubleType()), ("mae", T.DoubleType()),
]
SUMMARY_SCHEMA = T.StructType(
    [T.StructField("model_version", T.StringType(), False), T.StructField("source_version", T.LongType(), False),
     T.StructField("logical_date", T.DateType(), False)]
    + [T.StructField(n, t) for n, t in SUMMARY_FIELDS]
    + [T.StructField("drift_json", T.StringType())]
)


class WriteError(RuntimeError):
    """The predictions write failed; the message says what state the table is in."""


def key_condition(key: Sequence[str], model_version: str) -> Column:
    """MERGE match: the model version as a literal (prunes the target to its partition), then the key null-safely."""
    condition = F.col("t.model_version") == F.lit(model_version)
    for column in key:
        condition = condition & F.col(f"t.{column}").eqNullSafe(F.col(f"s.{column}"))
    return condition


def changed_condition(kind: str, label: str | None) -> str:
    """SQL (on t./s.) true when a matched prediction must be rewritten: the source row changed, or the
    score moved beyond SCORE_TOLERANCE, or the prediction or label differ; and never by a score of an
    older table version than the one the prediction was made from (a re-run of a past interval must
    not take a row back to its older content)."""
    score_moved = (f"(NOT (t.{SCORE} <=> s.{SCORE}) AND (t.{SCORE} IS NULL OR s.{SCORE} IS NULL "
                   f"OR abs(t.{SCORE} - s.{SCORE}) > {SCORE_TOLERANCE} * greatest(1.0, abs(t.{SCORE}))))")
    parts = [f"NOT (t.{SOURCE_ROW_HASH} <=> s.{SOURCE_ROW_HASH})", score_moved]
    if kind == "binary":
        parts.append(f"NOT (t.{PREDICTION} <=> s.{PREDICTION})")
    if label:
        parts.append(f"NOT (t.`{label}` <=> s.`{label}`)")
    not_older = "(t.source_version IS NULL OR s.source_version >= t.source_version)"
    return f"{not_older} AND ({' OR '.join(parts)})"


def add_missing_columns(spark: SparkSession, path: str, schema: T.StructType) -> None:
    """Add the columns of ``schema`` that a table written by older code lacks (they read as null there)."""
    have = set(DeltaTable.forPath(spark, path).toDF().columns)
    added = [f for f in schema.fields if f.name not in have]
    if added:
        columns = ", ".join(f"`{f.name}` {f.dataType.simpleString()}" for f in added)
        spark.sql(f"ALTER TABLE delta.`{path}` ADD COLUMNS ({columns})")


def write_predictions(spark: SparkSession, path: str, predictions: DataFrame, key: Sequence[str], model_version: str,
                      changed_when: str, metadata: Mapping[str, object]) -> None:
    """MERGE predictions in one commit: insert new keys, update matched rows where ``changed_when``.

    ``metadata`` goes on the commit. The first write creates the table with its rows in one commit
    (refused if another run created it meanwhile; then it merges). Predictions written before rows
    carried their source hash get the column (null there, so those rows count as changed). Delta
    re-reads a MERGE source it does not materialise; the source here is the map stage, so it is
    materialised once instead of being scored twice.
    """
    if delta_log.newest_version(path) is None:
        try:
            with delta_io.commit_metadata(spark, metadata):
                predictions.write.format("delta").partitionBy("model_version").mode("errorifexists").save(path)
            return
        except AnalysisException:
            if delta_log.newest_version(path) is None:  # not a lost race to create the table: a real failure
                raise
    add_missing_columns(spark, path, predictions.schema)
    merge = (DeltaTable.forPath(spark, path).alias("t").merge(predictions.alias("s"), key_condition(key, model_version))
             .whenMatchedUpdateAll(condition=changed_when).whenNotMatchedInsertAll())
    with delta_io.commit_metadata(spark, metadata), \
            delta_io.session_conf(spark, {"spark.databricks.delta.merge.materializeSource": "all"}):
        merge.execute()


def _short(err: BaseException) -> str:
    """The first lines of a Spark/Python error, enough to say what failed."""
    return " ".join(str(err).split())[:600]


def write_run(spark: SparkSession, path: str, predictions: DataFrame, key: Sequence[str], model_version: str,
              changed_when: str, metadata: Mapping[str, object], before: int | None) -> dict:
    """Write one run's predictions (the map stage runs inside this write); return its commit's history entry.

    ``metadata["run"]`` names the run's commit. On failure, WriteError says what state the table
    is in: as it was, unless another writer committed meanwhile.
    """
    try:
        write_predictions(spark, path, predictions, key, model_version, changed_when, metadata)
    except Exception as err:  # Spark wraps the map task's error; say what state the table is in
        now = delta_log.newest_version(path)
        was = "no table" if before is None else f"v{before}"
        state = f"left as it was ({was})" if now == before else f"now at v{now} (was {was})"
        raise WriteError(f"scoring/writing predictions failed; {path} is {state}; run again to complete it: "
                         f"{_short(err)}") from err
    found = delta_log.find_commit(path, before, str(metadata["run"]))
    # No commit of ours: Delta skipped a MERGE that changed no row, so the table is as it was.
    return found or {"version": before, "operationMetrics": {}}


def written_counts(commit: Mapping) -> dict[str, int]:
    """Rows scored, inserted and updated from a commit's metrics (a first WRITE reports only its output rows)."""
    metrics = commit.get("operationMetrics") or {}
    return {"scored": int(metrics.get("numSourceRows", metrics.get("numOutputRows", 0))),
            "inserted": int(metrics.get("numTargetRowsInserted", metrics.get("numOutputRows", 0))),
            "updated": int(metrics.get("numTargetRowsUpdated", 0))}


def summary_frame(spark: SparkSession, run: Mapping[str, object], summary: Sequence[Mapping],
                  comparison: Mapping) -> DataFrame:
    """Summary rows of one run (``run``: model_version, source_version, logical_date); the overall row
    carries the comparison with the card."""
    lineage = (run["model_version"], int(run["source_version"]), dt.date.fromisoformat(str(run["logical_date"])))
    rows = [(*lineage, *[r.get(n) for n, _ in SUMMARY_FIELDS],
             json.dumps(dict(comparison)) if r["scope"] == "overall" else None) for r in summary]
    return spark.createDataFrame(rows, SUMMARY_SCHEMA)


def write_summary(spark: SparkSession, path: str, run: Mapping[str, object], summary: Sequence[Mapping],
                  comparison: Mapping) -> None:
    """Replace one interval's summary rows of one model version (one per scope) in one commit.

    A re-run of the interval replaces its rows rather than adding more, whichever table version it
    scored; a commit that lost to a concurrent run's is retried on the new snapshot (the replace is
    idempotent).
    """
    frame = summary_frame(spark, run, summary, comparison)
    rows_of_run = (f"model_version = {delta_io.sql_string(str(run['model_version']))} "
                   f"AND logical_date = DATE {delta_io.sql_string(str(run['logical_date']))}")
    # Created (or given the columns newer code writes) first: a creation race is then a retried
    # conflict, and the replace is one commit on an existing table.
    delta_io.retry_on_conflict(lambda: delta_io.ensure_table(spark, path, SUMMARY_SCHEMA, allow_evolution=True), path)
    delta_io.retry_on_conflict(
        lambda: frame.write.format("delta").mode("overwrite").option("replaceWhere", rows_of_run).save(path), path)


def scored_interval(spark: SparkSession, path: str, logical_date: str) -> list[tuple[str, int]]:
    """(model version, table version) of each scoring recorded for the interval ``logical_date``."""
    if delta_log.newest_version(path) is None:
        return []
    rows = (delta_io.read_version(spark, path)
            .where((F.col("logical_date") == F.to_date(F.lit(logical_date))) & (F.col("scope") == F.lit("overall")))
            .select("model_version", "source_version").distinct().collect())
    return sorted((r["model_version"], int(r["source_version"])) for r in rows)
