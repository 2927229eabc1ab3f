"""The ingest stage: raw source -> clean, sharded Delta table plus a quarantine, with exact accounting.

The plan, and why it is shaped this way (the cost is in passes over the data and in Delta commits):

1. Source files are checked against the declared schema (a changed source is refused before any
   Spark job), read as records, parsed, joined, derived, checked against every rule, and given
   a shard and a split. All of this is one narrow pipeline. An observation on the records as
   read (before any join) counts them, blank lines and repeated header lines: a count that does
   not depend on the fate logic below, so the accounting can fail.
2. One window over the key marks each row clean / invalid / duplicate / superseded / conflict
   (``clean.mark_duplicates``). It needs the only shuffle of the parse: a hash exchange on
   (shard, key), placed before the columns the window compares are built.
3. Before the expensive pass, an existing table's schema and layout (key, shards, splits, salt,
   recorded as table properties) are compared with the configuration: a change is refused
   before any write (``layout``).
4. The marked rows are written once, as Parquet in the run's staging folder. Small columnar
   aggregations of those files give every count of the report, the fill statistics of the
   training split and the batch's range of each ``cluster_by`` column (``ingest_report``);
   observed during the write, the same aggregates cost more, as Spark evaluates observations
   row by row without code generation. Nothing is cached.
   In fail_fast mode the first bad row raises inside this pass, before any table exists or
   changes. The observed record count must equal the sum of the fates.
5. The clean rows are classified against the table (new, same, newer, older, in conflict: the
   in-batch rule, ``keys``) and MERGEd; into a table without rows all are new and are appended
   (``delta_io.first_load``, which two concurrent first loads cannot both commit). The check and
   the MERGE read only the table's files that overlap the batch's ``cluster_by`` range. The
   quarantine gets the rejected rows and those that lose against the table, by record id. Each
   commit is checked against what Delta recorded (rows inserted, updated, the row-count change);
   on any failure the run's own commits (found by run id in the commit metadata) are undone,
   never a concurrent writer's.
6. Rows per shard come from the Delta log (no scan). Feature statistics are fitted by training
   on the version it trains on (``feature_stats_for``), not by every load.

The clean table is partitioned by (split, shard). Split first: training reads one split's
files and never lists the others. Shard second: it is ``pmod(xxhash64(key), shards)``, a pure
function of the key, so a MERGE condition that names it prunes to the partitions a batch can
touch, and a shard can be read, compacted or rebuilt alone. A nightly batch's keys hash into
every shard, so what keeps its cost to the batch is file skipping by ``cluster_by``.
"""
from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from uuid import uuid4

from pyspark.sql import DataFrame, Observation, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from shardlake import delta_io, layout
from shardlake.config import DatasetSpec
from shardlake.intervals import DataInterval, render
from shardlake.lake import Lake
from shardlake.reading import read_parsed
from shardlake.stages import ingest_rows as R
from shardlake.stages import ingest_write as W
from shardlake.stages.ingest_report import (
    IngestError, IngestReport, all_rule_names, check_counts, cluster_ranges, count_losers, fill_report,
    set_key_rule_counts, shard_skew, staged_accounting)
from shardlake.stages.ingest_write import QUARANTINE_SCHEMA, table_constraints
from shardlake.transforms import clean as C
from shardlake.transforms import parse as P
from shardlake.transforms.stats import FeatureStats, fit_feature_stats, training_rows

log = logging.getLogger(__name__)


def _fail_fast_message(err: Exception) -> str | None:
    """The message of a fail_fast abort raised inside a Spark job, else None."""
    found = re.search(re.escape(C.FAIL_FAST_MARK) + r"[^\n]*", str(err))
    return found.group(0) if found else None


def _stage(spark: SparkSession, report: IngestReport, marked: DataFrame, spec: DatasetSpec,
           observation: Observation, folder: str) -> tuple[DataFrame, dict[str, tuple[object, object]]]:
    """Write the marked rows once, as Parquet under ``folder``, and fill the report's counts from them.

    The one pass over the source: reading, parsing, joins, rules and the key window run while the
    rows are written, and an observation counts the records as read. The report's other counts
    (fates, rules, fill statistics, ranges) are small columnar aggregations of the staged files,
    and both tables are written from these files afterwards (each reads only what it needs); the
    accounting is checked before either. fail_fast aborts surface here, before any table exists
    or changes.
    """
    try:
        marked.write.parquet(folder)
    except Exception as err:  # a Spark job failure carries the fail_fast message in its text
        message = _fail_fast_message(err)
        if message is None:
            raise
        raise IngestError(f"{message}; no table was created or changed") from None
    staged = spark.read.parquet(folder)
    seen = observed(observation.get, staged)
    report.rows_read, report.blank_lines, report.header_lines = (int(seen[k]) for k in (P.RECORD, P.BLANK, P.HEADER))
    fill_spec = {c: (f.strategy, f.value) for c, f in spec.fill.items()}
    counted, report.files = staged_accounting(staged, all_rule_names(spec), fill_spec, spec.cluster_by)
    fill_report(report, counted, spec, fill_spec)
    set_key_rule_counts(report)
    check_counts(report)
    return staged, cluster_ranges(counted, spec.cluster_by)


def observed(values: dict, staged: DataFrame) -> dict:
    """An observation's values; when Spark reports none (it can drop the metrics of a plan over an
    empty input), zeros, but only after the staged rows show there was nothing to count.

    A count that is missing for rows that exist would make the run write nothing and report
    success, so that is refused instead.
    """
    if values:
        return values
    if staged.limit(1).count():
        raise IngestError("the ingest's row counts were not reported by Spark for a non-empty input; "
                          "nothing was written; run it again")
    return {P.RECORD: 0, P.BLANK: 0, P.HEADER: 0}


def _ensure_tables(spark: SparkSession, spec: DatasetSpec, schema, clean_path: str, quarantine_path: str) -> None:
    # Two first runs may create the same table at once: the loser retries and finds it there.
    delta_io.retry_on_conflict(lambda: delta_io.ensure_table(
        spark, clean_path, schema, (C.SPLIT, C.SHARD), table_constraints(spec), spec.allow_schema_evolution,
        properties=layout.table_properties(spec)), clean_path)
    delta_io.retry_on_conflict(lambda: delta_io.ensure_table(spark, quarantine_path, QUARANTINE_SCHEMA),
                               quarantine_path)


def _write_tables(spark: SparkSession, spec: DatasetSpec, report: IngestReport,
                  rows: tuple[DataFrame, DataFrame, T.StructType], paths: tuple[str, str],
                  ranges: dict[str, tuple[object, object]], progress: Callable[[str], None], stack: ExitStack,
                  recorded: tuple[int | None, int | None] = (None, None)) -> None:
    """Clean table, then the quarantine (with the rows that lost against the table); check each commit
    against what Delta recorded; undo this run's own commits on any failure. ``ranges``: the batch's
    range of each ``cluster_by`` column, the only part of the table its keys can match. ``recorded``:
    the versions an earlier attempt of this run id recorded in ingest_runs."""
    clean_path, quarantine_path = paths
    candidates, rejected, schema = rows
    _ensure_tables(spark, spec, schema, clean_path, quarantine_path)
    before = {path: delta_io.latest_version(spark, path) for path in (clean_path, quarantine_path)}
    with delta_io.commit_metadata(spark, {"run_id": report.run_id, "fill_values": report.fill_values}):
        try:
            progress("writing the clean table")
            clean, losers = W.write_clean(spark, clean_path, candidates, spec, stack, report.clean_rows, ranges)
            report.write_mode = "first load (append)" if clean.into_empty else "merge"
            report.table_version = clean.version
            W.check_commit(spark, clean_path, clean)
            count_losers(report, losers)
            progress("writing the quarantine table")
            fates = [*P.RAW_COLUMNS, C.VIOLATIONS, C.FATE]
            records = C.quarantine_records(rejected.select(*fates).unionByName(losers.select(*fates)), report.run_id)
            quarantine = W.write_quarantine(spark, quarantine_path, records, stack, report.quarantined)
            report.quarantine_version = quarantine.version
            W.check_commit(spark, quarantine_path, quarantine)
        except BaseException as err:
            # The run's own commits are found by its commit metadata, whatever step failed.
            W.undo(spark, {path: delta_io.own_commit(spark, path, version) for path, version in before.items()}, err)
            if isinstance(err, W.AccountingError):
                raise IngestError(str(err)) from err
            raise
    report.rows_inserted, report.rows_updated = clean.inserted, clean.updated
    report.rows_merged = clean.inserted + clean.updated
    report.quarantine_inserted = quarantine.inserted
    # Only now may a version that is not this run's own commit stand in for one that was not made.
    # A re-run of a run that committed before (an Airflow retry or clear) produced the versions it recorded then,
    # whatever other runs committed since: inference of its interval must score that version.
    report.quarantine_version = _latest_if_none(spark, quarantine_path, report.quarantine_version, recorded[1])
    report.table_version = _latest_if_none(spark, clean_path, report.table_version, recorded[0])


def _latest_if_none(spark: SparkSession, path: str, version: int | None, recorded: int | None) -> int:
    """The version this run produced; when it committed nothing, the one an earlier attempt of it recorded,
    else (a run with nothing new that never committed) the table's current one."""
    if version is not None:
        return version
    return recorded if recorded is not None else delta_io.latest_version(spark, path)


def _table_statistics(spark: SparkSession, spec: DatasetSpec, report: IngestReport, clean_path: str) -> None:
    """Rows per shard and skew, from the Delta log: no data file is read.

    Feature statistics are not fitted here: they describe a whole version's training split, so
    fitting them on every nightly load would cost the table, not the batch. Training fits them
    on the version it trains on (``feature_stats_for``), as one aggregation next to the read it
    makes anyway, and the model card carries them from there.
    """
    counts = delta_io.partition_row_counts(spark, clean_path, report.table_version, C.SHARD)
    report.shard_counts = {s: counts.get(str(s), 0) for s in range(spec.shards)}
    report.skew_ratio = round(shard_skew(report.shard_counts), 4)
    report.skew_warning = report.skew_ratio > spec.skew_warn_ratio
    if report.skew_warning:
        log.warning("%s: shard skew %.3f (max/mean rows per shard) is above %.3f; rows per shard: %s",
                    spec.name, report.skew_ratio, spec.skew_warn_ratio, report.shard_counts)


def _staging_folder(lake: Lake, run_id: str, stack: ExitStack) -> str:
    """A location of this run's own under the lake's staging area (on the lake's store), removed when
    the run ends (either way)."""
    folder = lake.staging_location("ingest", f"{re.sub(r'[^A-Za-z0-9_.-]', '_', run_id)}-{uuid4().hex[:12]}")
    stack.callback(lake.store.delete, folder)
    return folder


def _check_existing(spark: SparkSession, spec: DatasetSpec, marked: DataFrame, clean_path: str) -> bool:
    """Refuse a schema or layout change before the expensive pass; True when the table holds rows."""
    if not delta_io.table_exists(spark, clean_path):
        return False
    delta_io.check_schema(spark, clean_path, R.clean_rows(marked, {}).schema, spec.allow_schema_evolution)
    layout.check_layout(spark, clean_path, spec)
    return not delta_io.is_empty(spark, clean_path)


def run_ingest(
    spark: SparkSession,
    lake: Lake,
    spec: DatasetSpec,
    run_id: str,
    base_dir: Path,
    mode: str = "quarantine",
    optimize: bool = False,
    progress: Callable[[str], None] = lambda _msg: None,
    interval: DataInterval | None = None,
) -> IngestReport:
    """Read, clean, shard and write the dataset into its Delta tables; verify the accounting.

    ``mode='fail_fast'`` aborts at the first row that breaks a rule, before any table is created
    or changed. Re-running on the same input leaves table content identical and commits nothing.
    A layout change (key, shards, splits, salt) is refused before any write (``layout``). If a
    write or the accounting check fails, the commits this run made are undone (RESTORE to the
    version before each), unless another writer committed on top of them: then the error says so.

    ``interval``: the run's data interval, which fills a source path template (``landing/{ds}/*.csv``);
    a re-run of a run id that committed nothing new reports the versions that run id recorded.
    """
    if mode not in ("quarantine", "fail_fast"):
        raise ValueError(f"mode must be 'quarantine' or 'fail_fast', got {mode!r}")
    started = time.monotonic()
    spec = for_interval(spec, interval)
    report = IngestReport(run_id=run_id, dataset=spec.name, source_path=spec.source.path,
                          logical_date=interval.start.isoformat() if interval else None,
                          interval_end=interval.end.isoformat() if interval else None)
    runs_path = lake.table(spec.name, "ingest_runs")
    columns = [(c.name, c.type) for c in spec.columns]
    clean_path = lake.table(spec.name, "clean")
    quarantine_path = lake.table(spec.name, "quarantine")

    with ExitStack() as stack:
        progress("checking the source schema")
        parsed, observation = R.kind_counts(read_parsed(spark, spec.source, columns, lake.scratch(), base_dir,
                                                        spec.allow_schema_evolution))
        joins = R.read_joins(spark, spec, lake, base_dir, report, stack)
        flagged = R.flag_records(R.records(parsed), spec, joins)
        if mode == "fail_fast":
            flagged = C.abort_on_violation(flagged)
        marked = C.mark_duplicates(flagged, spec.key, spec.order_by, spec.on_key_conflict)
        has_rows = _check_existing(spark, spec, marked, clean_path)
        # Only rejected rows need their raw text from here on, and clean rows only when they may
        # still lose against the table's row of their key: not staging it for the others keeps
        # the staged rows much smaller.
        keep_raw = F.lit(True) if has_rows else F.col(C.FATE).isin(*C.REJECTED)
        marked = marked.withColumn("_raw", F.when(keep_raw, F.col("_raw")))
        progress("parsing, checking rules and resolving duplicates")
        # The table's schema from the plan, not from the staged files (Parquet makes every column nullable).
        schema = R.clean_rows(marked, {}).schema
        staged, ranges = _stage(spark, report, marked, spec, observation, _staging_folder(lake, run_id, stack))
        rejected = staged.where(F.col(C.FATE).isin(*C.REJECTED))
        _write_tables(spark, spec, report, (R.clean_candidates(staged, report.fill_values), rejected, schema),
                      (clean_path, quarantine_path), ranges, progress, stack,
                      W.recorded_versions(spark, runs_path, run_id))
    if optimize:
        progress("optimizing (compaction)")
        report.table_version = delta_io.optimize(spark, clean_path, spec.cluster_by)

    progress("computing shard skew")
    _table_statistics(spark, spec, report, clean_path)
    report.seconds = round(time.monotonic() - started, 2)
    W.record_run(spark, runs_path, report.to_dict())
    return report


def for_interval(spec: DatasetSpec, interval: DataInterval | None) -> DatasetSpec:
    """``spec`` with its source and join paths rendered for ``interval`` (``shardlake.intervals``)."""
    def rendered(source):
        return source.model_copy(update={"path": render(source.path, interval)})

    joins = [join.model_copy(update={"source": rendered(join.source)}) for join in spec.joins]
    return spec.model_copy(update={"source": rendered(spec.source), "joins": joins})


def rebuild_layout(spark: SparkSession, lake: Lake, spec: DatasetSpec) -> int:
    """Rewrite the clean table in ``spec``'s layout (shards, splits, salt) in one commit; its version."""
    return layout.rebuild(spark, lake.table(spec.name, "clean"), spec, table_constraints(spec))


def feature_stats_for(spark: SparkSession, lake: Lake, spec: DatasetSpec, version: int) -> FeatureStats:
    """Statistics of one clean-table version's training split: as recorded with the version (ingests
    before the statistics moved to training recorded them), else fitted now."""
    runs_path = lake.table(spec.name, "ingest_runs")
    if delta_io.table_exists(spark, runs_path):
        row = (delta_io.read_version(spark, runs_path).where(F.col("table_version") == version)
               .orderBy(F.col("run_id").desc()).select("report_json").first())
        recorded = json.loads(row[0]).get("feature_stats") if row is not None else None
        if recorded:
            return FeatureStats.from_dict(recorded)
    version_df = delta_io.read_version(spark, lake.table(spec.name, "clean"), version)
    return fit_feature_stats(training_rows(version_df), spec.features.numeric, spec.features.categorical,
                             spec.features.max_categories)
