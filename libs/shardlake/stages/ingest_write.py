"""The ingest's writes: its tables, its MERGEs, the check of what Delta recorded, and undo.

Every write here is keyed on the data (MERGE by key or by record id), checks what its own commit
did against what it meant to do (rows inserted and updated, as Delta recorded them, and the
change of the table's row count), and knows its own commit by the run's commit metadata. A
MERGE that has nothing to do makes no commit, and then the run's version for that table is
"none", never the latest version, which may be another writer's.
"""
from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass

from pyspark import StorageLevel
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from shardlake import delta_io, delta_log
from shardlake.config import DatasetSpec
from shardlake.transforms import clean as C
from shardlake.transforms import keys as K

log = logging.getLogger(__name__)


class AccountingError(RuntimeError):
    """What Delta recorded for this run's commit differs from what the run meant to write."""


QUARANTINE_SCHEMA = T.StructType([
    T.StructField("record_id", T.StringType(), False),
    T.StructField("source_file", T.StringType()),
    T.StructField("raw", T.StringType()),
    T.StructField("rules", T.ArrayType(T.StringType())),
    T.StructField("run_id", T.StringType()),
])


@dataclass
class Written:
    """One table's write by this run: its own commit (None: none made) and the rows it meant to write."""

    version: int | None = None
    inserted: int = 0
    updated: int = 0
    into_empty: bool = False  # the table had no rows: every row was inserted, none classified


def table_constraints(spec: DatasetSpec) -> dict[str, str]:
    """Delta CHECK constraints of the clean table: the declared rules as table invariants.

    Delta then refuses any write (this job's or another's) that would break them.
    """
    rules = spec.rules
    checks = {
        "shard_in_range": f"{C.SHARD} >= 0 AND {C.SHARD} < {spec.shards}",
        "split_known": f"{C.SPLIT} IN ('train', 'validation', 'test')",
    }
    for column in dict.fromkeys([*spec.key, *rules.required]):
        checks[f"required_{column}"] = f"{column} IS NOT NULL"
    for column, bounds in rules.ranges.items():
        parts = ([f"{column} >= {bounds.min}"] if bounds.min is not None else []) + \
                ([f"{column} <= {bounds.max}"] if bounds.max is not None else [])
        if parts:
            checks[f"range_{column}"] = f"{column} IS NULL OR ({' AND '.join(parts)})"
    for column, values in rules.allowed.items():
        listed = ", ".join(delta_io.sql_string(v) for v in values)
        checks[f"allowed_{column}"] = f"{column} IS NULL OR {column} IN ({listed})"
    for column, pattern in rules.patterns.items():
        checks[f"pattern_{column}"] = f"{column} IS NULL OR {column} RLIKE {delta_io.sql_string(pattern)}"
    for column in rules.finite:
        checks[f"finite_{column}"] = (f"{column} IS NULL OR (NOT isnan({column}) "
                                      f"AND abs({column}) < double('Infinity'))")
    return {name.lower(): expression for name, expression in checks.items()}


def check_commit(spark: SparkSession, path: str, written: Written) -> None:
    """This run's commit did exactly what it meant to: its inserts and updates, and the row-count change.

    Delta's own operation metrics are compared with the run's expectation, and the table's row
    count before and after the commit (from the log's file statistics) with the rows inserted:
    a commit that duplicated or lost rows fails one of the two.
    """
    if written.version is None:
        if written.inserted or written.updated:
            raise AccountingError(f"accounting mismatch: {path}: {written.inserted} rows to insert and "
                                  f"{written.updated} to update, but the MERGE made no commit")
        return
    recorded = delta_io.commit_counts(spark, path, written.version)
    grown = delta_log.row_count(path, written.version) - delta_log.row_count(path, written.version - 1)
    meant = {"inserted": written.inserted, "updated": written.updated, "deleted": 0}
    if recorded != meant or grown != written.inserted:
        raise AccountingError(f"accounting mismatch: {path}: meant {meant}, but Delta version {written.version} "
                              f"recorded {recorded} and the table grew by {grown} rows")


def _persisted(stack: ExitStack, df: DataFrame) -> DataFrame:
    cached = df.persist(StorageLevel.MEMORY_AND_DISK)
    stack.callback(cached.unpersist)
    return cached


def write_clean(spark: SparkSession, path: str, candidates: DataFrame, spec: DatasetSpec,
                stack: ExitStack, expected_rows: int,
                ranges: Mapping[str, tuple[object, object]] | None = None) -> tuple[Written, DataFrame]:
    """MERGE the clean rows that are new or win against the table's row of their key.

    Returns the write and the candidates that lose against the table (``_fate`` superseded or
    conflict, for the quarantine). Each attempt classifies the batch against the table as it is
    then (``keys.against_table``), so a retry after a concurrent writer's commit expects exactly
    what is left to do; the MERGE's update condition is the same rule, as SQL. A table without
    rows needs no classification (``_first_load``); ``expected_rows`` is the candidates' count.
    ``ranges`` (the candidates' min/max of each ``cluster_by`` column) prune both the
    classification's read of the table and the MERGE to the files that can hold the batch's keys.
    """
    table_schema = delta_io.read_version(spark, path).schema
    table_columns = table_schema.fieldNames()
    wins = f"({K.incoming_wins(spec.order_by, spec.on_key_conflict)}) AND t.{C.ROW_HASH} <> s.{C.ROW_HASH}"
    types = {f.name: f.dataType for f in table_schema.fields}
    outcome: dict[str, DataFrame] = {}

    def attempt() -> Written:
        version = delta_io.latest_version(spark, path)
        if delta_log.row_count(path, version) == 0:
            return _first_load(spark, path, candidates, table_columns, expected_rows, outcome, version)
        attempt_stack = ExitStack()
        table = delta_io.read_version(spark, path, version)
        classified = _persisted(attempt_stack, K.against_table(candidates, table, spec.key, spec.order_by,
                                                               spec.on_key_conflict, ranges))
        try:
            counts = {r[0]: int(r[1]) for r in classified.groupBy(K.AGAINST).count().collect()}
            written = Written(inserted=counts.get(K.NEW, 0), updated=counts.get(K.UPDATE, 0))
            if written.inserted or written.updated:
                source = classified.where(F.col(K.AGAINST).isin(K.NEW, K.UPDATE)).select(*table_columns)
                pruned = K.within(ranges or {}, "t", types)
                # The source is staged files classified against a pinned table version: stable.
                written.version = delta_io.merge_by_key(spark, path, source, spec.key, prune_on=(C.SPLIT, C.SHARD),
                                                        changed_when=wins, target_filter=pruned, stable_source=True)
        except BaseException:
            attempt_stack.close()
            raise
        outcome["losers"] = classified.where(F.col(K.AGAINST).isin(C.SUPERSEDED, C.CONFLICT))
        stack.enter_context(attempt_stack)
        return written

    written = delta_io.retry_on_conflict(attempt, path)
    return written, outcome["losers"].withColumn(C.FATE, F.col(K.AGAINST)).drop(K.AGAINST)


def _first_load(spark: SparkSession, path: str, candidates: DataFrame, table_columns: Sequence[str],
                expected_rows: int, outcome: dict[str, DataFrame], empty_at: int) -> Written:
    """Into a table without rows (at version ``empty_at``) every candidate is new: no classification.

    An append that still conflicts with a concurrent first load (``delta_io.first_load``): the
    retry then classifies against the rows that writer left. Nothing loses against an empty table.
    """
    outcome["losers"] = candidates.limit(0).withColumn(K.AGAINST, F.lit(None).cast("string"))
    return _insert_all(spark, path, candidates.select(*table_columns), expected_rows, empty_at)


def _insert_all(spark: SparkSession, path: str, rows: DataFrame, expected_rows: int, empty_at: int) -> Written:
    """Insert every row into a table that held none at ``empty_at`` (``delta_io.first_load``);
    ``expected_rows`` is their count, which the commit check holds it to."""
    written = Written(inserted=expected_rows, into_empty=True)
    if expected_rows:
        written.version = delta_io.first_load(spark, path, rows, empty_at)
    return written


def write_quarantine(spark: SparkSession, path: str, records: DataFrame, stack: ExitStack,
                     expected_rows: int) -> Written:
    """Insert the quarantine records whose id the table lacks (a re-run's records are already there).

    ``expected_rows`` is the records' count: into a quarantine without rows all of them are new,
    and no anti-join or count is needed (``delta_io.first_load``, which still conflicts with a
    concurrent first write).
    """
    def attempt() -> Written:
        version = delta_io.latest_version(spark, path)
        if delta_log.row_count(path, version) == 0:
            return _insert_all(spark, path, records, expected_rows, version)
        attempt_stack = ExitStack()
        present = delta_io.read_version(spark, path).select("record_id")
        new = _persisted(attempt_stack, records.join(present, on="record_id", how="left_anti"))
        try:
            written = Written(inserted=new.count())
            if written.inserted:
                written.version = delta_io.merge_by_key(spark, path, new, ["record_id"], update=False)
        except BaseException:
            attempt_stack.close()
            raise
        stack.enter_context(attempt_stack)
        return written

    return delta_io.retry_on_conflict(attempt, path)


def undo(spark: SparkSession, written: Mapping[str, int | None], err: BaseException) -> None:
    """Undo each commit this run made (its own, found by run id), never a concurrent writer's."""
    for path, version in written.items():
        if version is None:
            continue
        try:
            delta_io.undo_commit(spark, path, version)
        except delta_io.UndoError as undo_err:
            log.error("%s", undo_err)
            err.add_note(str(undo_err))


RUNS_SCHEMA = T.StructType([
    T.StructField("run_id", T.StringType(), False),
    T.StructField("dataset", T.StringType()),
    T.StructField("table_version", T.LongType()),
    T.StructField("quarantine_version", T.LongType()),
    T.StructField("rows_read", T.LongType()),
    T.StructField("clean_rows", T.LongType()),
    T.StructField("quarantined", T.LongType()),
    T.StructField("duplicates_removed", T.LongType()),
    T.StructField("rule_counts", T.MapType(T.StringType(), T.LongType())),
    T.StructField("shard_counts", T.MapType(T.IntegerType(), T.LongType())),
    T.StructField("skew_ratio", T.DoubleType()),
    T.StructField("report_json", T.StringType()),
])


# The idempotent-write id of a run's record, with its run id (Delta keeps the ids it has seen per table).
RUN_APP_ID = "shardlake-ingest-run"


def recorded_versions(spark: SparkSession, path: str, run_id: str) -> tuple[int | None, int | None]:
    """(clean, quarantine) versions an earlier attempt of ``run_id`` recorded; (None, None) if it recorded none."""
    if not delta_io.table_exists(spark, path):
        return None, None
    rows = delta_log.rows_where(path, "run_id", run_id, ["table_version", "quarantine_version"])
    return (rows[0]["table_version"], rows[0]["quarantine_version"]) if rows else (None, None)


def record_run(spark: SparkSession, path: str, report: dict) -> None:
    """Upsert a run's report (counts, versions, statistics) into the dataset's ingest_runs table, keyed on run id.

    A run's first record is a blind append under its run id (``delta_io.append_once``): it reads none
    of the earlier runs' records, so recording a nightly run costs the same after ten years of them.
    Only a run id recorded before (an Airflow retry or clear) replaces its record by MERGE, which
    reads them all.
    """
    row = (report["run_id"], report["dataset"], report["table_version"], report["quarantine_version"],
           report["rows_read"], report["clean_rows"], report["quarantined"], report["duplicates_removed"],
           report["rule_counts"], report["shard_counts"], float(report["skew_ratio"]),
           json.dumps(report, sort_keys=True, default=str))
    delta_io.retry_on_conflict(lambda: delta_io.ensure_table(spark, path, RUNS_SCHEMA), path)
    source = spark.createDataFrame([row], RUNS_SCHEMA)

    def write() -> None:
        if delta_io.append_once(spark, path, source, f"{RUN_APP_ID}:{report['run_id']}") is None:
            delta_io.merge_by_key(spark, path, source, ["run_id"], stable_source=True)

    delta_io.retry_on_conflict(write, path)
