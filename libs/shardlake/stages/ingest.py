"""The ingest stage: raw source -> clean, sharded Delta table plus a quarantine, with exact accounting.

The plan, and why it is shaped this way (the cost is in passes over the data and in Delta commits):

1. Source files are checked against the declared schema (a changed source is refused before any
   Spark job), read as raw text, parsed, joined, derived, checked against every rule, and given
   a shard and a split. All of this is one narrow pipeline.
2. One window over the key marks each row clean / invalid / duplicate / superseded. It needs
   the only shuffle of the parse: a hash exchange on (shard, key), placed before the columns
   the window compares are built, so they do not travel through it.
3. The marked rows are cached and one aggregation computes every count of the report (rows
   read, per fate, per rule) and the fill statistics of the training split. In fail_fast mode
   the first bad row raises inside this pass, before any table exists or changes.
4. The quarantine and the clean rows are written from the cache with a MERGE by key. Even a
   first load MERGEs: two concurrent first loads must conflict (and the loser retry), not both
   append. Into a table that has rows, only rows whose (key, content hash) is not there yet are
   merged, so a re-run of the same input commits nothing (content identical, no new version).
5. What Delta recorded is checked against the counts (rows read = clean + quarantined +
   duplicates removed, and each table got exactly its rows); on any failure the run's own
   commits (found by run id in the commit metadata) are undone, never a concurrent writer's.
6. Rows per shard come from the Delta log (no scan); feature statistics of the training split
   of the new version are stored with the run in the ``ingest_runs`` table.

The clean table is partitioned by (split, shard). Split first: training reads one split's
files (``snapshot_files`` with a split filter) and never lists the others. Shard second: it is
``pmod(xxhash64(key), shards)``, a pure function of the key, so a MERGE condition that names it
prunes to the partitions a batch can touch, a shard can be read, compacted or rebuilt alone, and
the key window of a re-run finds each key's rows in one partition. The number of partitions is
therefore fixed by configuration (3 x shards) and does not grow with the data.
"""
from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from functools import reduce
from pathlib import Path

from pyspark import StorageLevel
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from shardlake import delta_io, sources
from shardlake.config import DatasetSpec, JoinSpec, SourceSpec
from shardlake.lake import Lake
from shardlake.transforms import clean as C
from shardlake.transforms import parse as P
from shardlake.transforms.stats import (FeatureStats, fill_aggregates, fill_values_from, fit_feature_stats,
                                        is_training, training_rows)

SUPERSEDED = C.SUPERSEDED_RULE
log = logging.getLogger(__name__)


class IngestError(RuntimeError):
    """The ingest refused to write: bad rows in fail_fast mode, or accounting that does not add up."""


@dataclass
class IngestReport:
    run_id: str
    dataset: str
    rows_read: int = 0
    clean_rows: int = 0
    quarantined: int = 0
    duplicates_removed: int = 0
    rule_counts: dict[str, int] = field(default_factory=dict)
    shard_counts: dict[int, int] = field(default_factory=dict)
    skew_ratio: float = 0.0
    skew_warning: bool = False
    table_version: int | None = None
    quarantine_version: int | None = None
    fill_values: dict[str, object] = field(default_factory=dict)
    feature_stats: dict = field(default_factory=dict)
    seconds: float = 0.0
    invalid: int = 0
    superseded: int = 0
    write_mode: str = ""
    rows_merged: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


def parse_records(raw: DataFrame, source: SourceSpec, columns: list[tuple[str, str]],
                  names: list[str] | None = None) -> DataFrame:
    """Raw records to declared, typed columns plus ``_parse_errors``; ``names``: the records' own fields."""
    declared = [n for n, _ in columns]
    fields = P.split_fields(raw, names or declared, source.format, source.delimiter, keep=declared)
    # The CSV parser already drops spaces around unquoted values (see split_fields).
    return P.cast_columns(fields, columns, source.null_values, trim=source.format != "csv")


def read_parsed(spark: SparkSession, source: SourceSpec, columns: list[tuple[str, str]], lake: Lake,
                base_dir: Path, allow_evolution: bool) -> DataFrame:
    """Check the source files' schemas, read them as raw records and parse them (one layout at a time)."""
    files = sources.materialise(sources.resolve_files(source.path, base_dir), source.compression, lake.staging())
    groups = sources.layout(files, source.format, columns, source.delimiter, source.header, source.encoding,
                            allow_evolution) or [sources.SourceGroup(tuple(n for n, _ in columns), ())]
    parts = [parse_records(sources.read_raw_records(spark, g.files, source.format, source.header, source.encoding),
                           source, columns, list(g.names)) for g in groups]
    return reduce(DataFrame.unionByName, parts)


def join_table(parsed: DataFrame, join: JoinSpec) -> DataFrame:
    """A parsed join source reduced to its rows without parse errors, unique on its join keys.

    Give it a cached ``parsed``: without that barrier the optimizer pushes the "parsed without
    error" filter below the parse and inlines the CSV parser into it once per column it checks
    (dozens of parses per line; this was most of the join's cost).
    """
    usable = parsed.where(F.size(F.col(P.PARSE_ERRORS)) == 0).drop(*P.RAW_COLUMNS, P.PARSE_ERRORS)
    return C.unique_by(usable, list(join.keys.values())) if join.dedupe else usable


@contextmanager
def _cached(df: DataFrame) -> Iterator[DataFrame]:
    """``df`` persisted (memory, spilling to disk) for the block, released afterwards."""
    cached = df.persist(StorageLevel.MEMORY_AND_DISK)
    try:
        yield cached
    finally:
        cached.unpersist()


def _required(spec: DatasetSpec) -> list[str]:
    return list(dict.fromkeys([*spec.key, *spec.rules.required]))


def flag_records(parsed: DataFrame, spec: DatasetSpec, joins: list[tuple[JoinSpec, DataFrame]]) -> DataFrame:
    """Parsed records enriched by joins and derived columns, with ``_violations`` and shard/split."""
    df = parsed
    for join, other in joins:
        df = C.left_join(df, other, join.keys, join.select)
    df = C.derive(df, spec.derived)
    rules = spec.rules
    df = C.flag_violations(
        df,
        required=_required(spec),
        ranges={c: (r.min, r.max) for c, r in rules.ranges.items()},
        allowed=rules.allowed,
        patterns=rules.patterns,
        finite=rules.finite,
    )
    return C.add_shard_and_split(df, spec.key, spec.shards, spec.splits.train, spec.splits.validation,
                                 spec.splits.salt)


def clean_schema(flagged: DataFrame) -> list[str]:
    """Data columns of the clean table, in order (raw text and bookkeeping excluded)."""
    return [c for c in flagged.columns if c not in (*P.RAW_COLUMNS, C.VIOLATIONS, C.FATE)]


def all_rule_names(spec: DatasetSpec) -> list[str]:
    """Every rule name a row of this dataset can break (parse, type and declared rules)."""
    rules = spec.rules
    return [P.MALFORMED, P.ENCODING, *[f"type:{c}" for c in spec.column_names],
            *C.rule_names(_required(spec), rules.ranges, rules.allowed, rules.patterns, rules.finite)]


def _sql_string(value: str) -> str:
    """A Spark SQL string literal (backslashes and quotes escaped)."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def table_constraints(spec: DatasetSpec) -> dict[str, str]:
    """Delta CHECK constraints of the clean table: the declared rules as table invariants.

    Delta then refuses any write (this job's or another's) that would break them.
    """
    rules = spec.rules
    checks = {
        "shard_in_range": f"{C.SHARD} >= 0 AND {C.SHARD} < {spec.shards}",
        "split_known": f"{C.SPLIT} IN ('train', 'validation', 'test')",
    }
    for column in _required(spec):
        checks[f"required_{column}"] = f"{column} IS NOT NULL"
    for column, bounds in rules.ranges.items():
        parts = ([f"{column} >= {bounds.min}"] if bounds.min is not None else []) + \
                ([f"{column} <= {bounds.max}"] if bounds.max is not None else [])
        if parts:
            checks[f"range_{column}"] = f"{column} IS NULL OR ({' AND '.join(parts)})"
    for column, values in rules.allowed.items():
        checks[f"allowed_{column}"] = f"{column} IS NULL OR {column} IN ({', '.join(_sql_string(v) for v in values)})"
    for column, pattern in rules.patterns.items():
        checks[f"pattern_{column}"] = f"{column} IS NULL OR {column} RLIKE {_sql_string(pattern)}"
    for column in rules.finite:
        checks[f"finite_{column}"] = (f"{column} IS NULL OR (NOT isnan({column}) "
                                      f"AND abs({column}) < double('Infinity'))")
    return {name.lower(): expression for name, expression in checks.items()}


QUARANTINE_SCHEMA = T.StructType([
    T.StructField("record_id", T.StringType(), False),
    T.StructField("source_file", T.StringType()),
    T.StructField("raw", T.StringType()),
    T.StructField("rules", T.ArrayType(T.StringType())),
    T.StructField("run_id", T.StringType()),
])


def shard_skew(counts: dict[int, int]) -> float:
    """max/mean of rows per shard (1.0 is perfectly even)."""
    if not counts:
        return 0.0
    mean = sum(counts.values()) / len(counts)
    return max(counts.values()) / mean if mean else 0.0


def _accounting(marked: DataFrame, rule_names: list[str], fill_spec: dict) -> dict:
    """One aggregation for the whole report: rows per fate, rows per broken rule, fill statistics.

    Fill statistics use the clean rows of the training split only, so nothing is learnt from
    validation or test rows.
    """
    fate = F.col(C.FATE)
    aggs = [F.count(F.lit(1)).alias("rows")]
    aggs += [F.count(F.when(fate == F.lit(name), 1)).alias(f"fate:{name}")
             for name in (C.CLEAN, C.INVALID, C.DUPLICATE, C.SUPERSEDED)]
    aggs += [F.count(F.when(F.array_contains(F.col(C.VIOLATIONS), rule), 1)).alias(f"rule:{rule}")
             for rule in rule_names]
    aggs += fill_aggregates(fill_spec, where=(fate == F.lit(C.CLEAN)) & is_training())
    return marked.agg(*aggs).first().asDict()


def _fail_fast_message(err: Exception) -> str | None:
    """The message of a fail_fast abort raised inside a Spark job, else None."""
    found = re.search(re.escape(C.FAIL_FAST_MARK) + r"[^\n]*", str(err))
    return found.group(0) if found else None


def _fill_report(report: IngestReport, row: dict, spec: DatasetSpec, fill_spec: dict) -> None:
    report.rows_read = int(row["rows"])
    report.clean_rows = int(row[f"fate:{C.CLEAN}"])
    report.invalid = int(row[f"fate:{C.INVALID}"])
    report.superseded = int(row[f"fate:{C.SUPERSEDED}"])
    report.duplicates_removed = int(row[f"fate:{C.DUPLICATE}"])
    report.quarantined = report.invalid + report.superseded
    report.rule_counts = {r: int(row[f"rule:{r}"]) for r in all_rule_names(spec) if row[f"rule:{r}"]}
    if report.superseded:
        report.rule_counts[SUPERSEDED] = report.superseded
    report.fill_values = fill_values_from(row, fill_spec)


def _check_counts(report: IngestReport) -> None:
    """rows read = clean + quarantined + duplicates removed, exactly."""
    if report.clean_rows + report.quarantined + report.duplicates_removed != report.rows_read:
        raise IngestError(
            f"accounting mismatch: read {report.rows_read} != clean {report.clean_rows} + quarantined "
            f"{report.quarantined} + duplicates {report.duplicates_removed}"
        )


def _check_written(spark: SparkSession, path: str, version: int | None, expected: int, what: str) -> None:
    """This run's commit ``version`` took exactly ``expected`` rows (as Delta itself recorded it).

    None means the run had no rows for the table and made no commit, so there is none to check.
    """
    if version is None:
        return
    written = delta_io.written_rows(spark, path, version)
    if written != expected:
        raise IngestError(f"accounting mismatch: {expected} {what} rows to write, but Delta version {version} "
                          f"of {path} recorded {written}")


def _write(spark: SparkSession, path: str, df: DataFrame, rows: int, key: list[str], **merge: object) -> int | None:
    """MERGE ``rows`` rows into the table; with none, commit nothing and return None.

    None, not the latest version: a concurrent writer may have committed meanwhile, and its
    commit must not be checked (or restored away) as if it were this run's.
    """
    if rows == 0:
        return None
    return delta_io.merge_by_key(spark, path, df, key, **merge)


def _write_clean(spark: SparkSession, path: str, clean_df: DataFrame, report: IngestReport, spec: DatasetSpec,
                 stack: ExitStack) -> int:
    """MERGE the clean rows that are new or changed; returns how many were sent to Delta.

    Into a non-empty table only rows whose (key, content hash) is not there yet are merged:
    a MERGE of every row would rewrite each file holding a matched key even when nothing
    changes, so a re-run of the same input now commits nothing at all.
    """
    source, rows = clean_df, report.clean_rows
    if rows and not delta_io.is_empty(spark, path):
        source = stack.enter_context(_cached(delta_io.changed_rows(spark, path, clean_df, spec.key, C.ROW_HASH)))
        rows = source.count()
    report.table_version = _write(spark, path, source, rows, spec.key, prune_on=(C.SPLIT, C.SHARD),
                                  changed_when=_newer_or_changed(spec))
    report.rows_merged = rows
    return rows


def _newer_or_changed(spec: DatasetSpec) -> str:
    """MERGE update condition: the content changed and the incoming row is not older than the table's."""
    changed = f"t.{C.ROW_HASH} <> s.{C.ROW_HASH}"
    if spec.order_by:
        o = spec.order_by
        changed += f" AND (t.`{o}` IS NULL OR (s.`{o}` IS NOT NULL AND s.`{o}` >= t.`{o}`))"
    return changed


def _first_pass(report: IngestReport, marked: DataFrame, spec: DatasetSpec) -> None:
    """Fill the report's counts and fill values from one aggregation; fail_fast aborts surface here."""
    fill_spec = {c: (f.strategy, f.value) for c, f in spec.fill.items()}
    try:
        row = _accounting(marked, all_rule_names(spec), fill_spec)
    except Exception as err:  # a Spark job failure carries the fail_fast message in its text
        message = _fail_fast_message(err)
        if message is None:
            raise
        raise IngestError(f"{message}; no table was created or changed") from None
    _fill_report(report, row, spec, fill_spec)
    _check_counts(report)


def _write_tables(spark: SparkSession, spec: DatasetSpec, report: IngestReport, clean_df: DataFrame,
                  quarantine_df: DataFrame, clean_path: str, quarantine_path: str,
                  progress: Callable[[str], None], stack: ExitStack) -> None:
    """Quarantine first, then the clean table; check what Delta recorded; undo this run's own commits on any failure."""
    # Two first runs may create the same table at once: the loser retries and finds it there.
    delta_io.retry_on_conflict(lambda: delta_io.ensure_table(
        spark, clean_path, clean_df.schema, (C.SPLIT, C.SHARD), table_constraints(spec),
        spec.allow_schema_evolution), clean_path)
    delta_io.retry_on_conflict(lambda: delta_io.ensure_table(spark, quarantine_path, QUARANTINE_SCHEMA),
                               quarantine_path)
    report.write_mode = "merge into empty table" if delta_io.is_empty(spark, clean_path) else "merge"
    try:
        with delta_io.commit_metadata(spark, {"run_id": report.run_id, "fill_values": report.fill_values}):
            progress("writing the quarantine table")
            report.quarantine_version = _write(spark, quarantine_path, quarantine_df, report.quarantined,
                                               ["record_id"], update=False)
            progress(f"writing the clean table ({report.write_mode})")
            merged = _write_clean(spark, clean_path, clean_df, report, spec, stack)
        _check_written(spark, quarantine_path, report.quarantine_version, report.quarantined, "quarantine")
        _check_written(spark, clean_path, report.table_version, merged, "new or changed clean")
    except BaseException as err:
        _undo_run(spark, {quarantine_path: report.quarantine_version, clean_path: report.table_version}, err)
        raise
    # Only now may a version that is not this run's own commit stand in for one that was not made.
    report.quarantine_version = _latest_if_none(spark, quarantine_path, report.quarantine_version)
    report.table_version = _latest_if_none(spark, clean_path, report.table_version)


def _undo_run(spark: SparkSession, written: dict[str, int | None], err: BaseException) -> None:
    """Undo each commit this run made (its own, found by run id), never a concurrent writer's."""
    for path, version in written.items():
        if version is None:
            continue
        try:
            delta_io.undo_commit(spark, path, version)
        except delta_io.UndoError as undo_err:
            log.error("%s", undo_err)
            err.add_note(str(undo_err))


def _latest_if_none(spark: SparkSession, path: str, version: int | None) -> int:
    """The version this run produced, or (when it committed nothing) the table's current one."""
    return delta_io.latest_version(spark, path) if version is None else version


def clean_rows(marked: DataFrame, fill_values: dict) -> DataFrame:
    """The rows for the clean table: clean fate, table columns, missing values filled, content hash."""
    columns = clean_schema(marked)
    kept = marked.where(F.col(C.FATE) == F.lit(C.CLEAN)).select(*columns)
    return C.with_row_hash(C.fill_missing(kept, fill_values), [c for c in columns if c not in (C.SHARD, C.SPLIT)])


def _table_statistics(spark: SparkSession, spec: DatasetSpec, report: IngestReport, clean_path: str) -> None:
    """Rows per shard and skew (from the Delta log), and feature statistics of the version's training split."""
    counts = delta_io.partition_row_counts(spark, clean_path, report.table_version, C.SHARD)
    report.shard_counts = {s: counts.get(str(s), 0) for s in range(spec.shards)}
    report.skew_ratio = round(shard_skew(report.shard_counts), 4)
    report.skew_warning = report.skew_ratio > spec.skew_warn_ratio
    if report.skew_warning:
        log.warning("%s: shard skew %.3f (max/mean rows per shard) is above %.3f; rows per shard: %s",
                    spec.name, report.skew_ratio, spec.skew_warn_ratio, report.shard_counts)
    version_df = delta_io.read_version(spark, clean_path, report.table_version)
    stats = fit_feature_stats(training_rows(version_df), spec.features.numeric, spec.features.categorical,
                              spec.features.max_categories)
    report.feature_stats = stats.to_dict()


def run_ingest(
    spark: SparkSession,
    lake: Lake,
    spec: DatasetSpec,
    run_id: str,
    base_dir: Path,
    mode: str = "quarantine",
    optimize: bool = False,
    progress: Callable[[str], None] = lambda _msg: None,
) -> IngestReport:
    """Read, clean, shard and write the dataset into its Delta tables; verify the accounting.

    ``mode='fail_fast'`` aborts at the first row that breaks a rule, before any table is created
    or changed. Re-running on the same input leaves table content identical. If a write or the
    accounting check fails, the commits this run made are undone (RESTORE to the version before
    each), unless another writer committed on top of them: then the error says so.
    """
    if mode not in ("quarantine", "fail_fast"):
        raise ValueError(f"mode must be 'quarantine' or 'fail_fast', got {mode!r}")
    started = time.monotonic()
    report = IngestReport(run_id=run_id, dataset=spec.name)
    columns = [(c.name, c.type) for c in spec.columns]
    clean_path = lake.table(spec.name, "clean")
    quarantine_path = lake.table(spec.name, "quarantine")

    with ExitStack() as stack:
        progress("checking the source schema")
        parsed = read_parsed(spark, spec.source, columns, lake, base_dir, spec.allow_schema_evolution)
        joins = [(j, join_table(stack.enter_context(_cached(read_parsed(
            spark, j.source, [(c.name, c.type) for c in j.columns], lake, base_dir, False))), j))
            for j in spec.joins]
        flagged = flag_records(parsed, spec, joins)
        if mode == "fail_fast":
            flagged = C.abort_on_violation(flagged)
        marked = C.mark_duplicates(flagged, spec.key, spec.order_by)
        # Refuse a schema change before the expensive pass, not after it.
        if delta_io.table_exists(spark, clean_path):
            delta_io.check_schema(spark, clean_path, clean_rows(marked, {}).schema, spec.allow_schema_evolution)
        # Only quarantined rows need their raw text and file from here on: not caching them for
        # the others makes the cache much smaller.
        rejected_fate = F.col(C.FATE).isin(C.INVALID, C.SUPERSEDED)
        marked = marked.withColumns({c: F.when(rejected_fate, F.col(c)) for c in P.RAW_COLUMNS})
        marked = stack.enter_context(_cached(marked))
        progress("parsing, checking rules and resolving duplicates")
        _first_pass(report, marked, spec)
        rejected = marked.where(rejected_fate)
        _write_tables(spark, spec, report, clean_rows(marked, report.fill_values),
                      C.quarantine_records(rejected, run_id), clean_path, quarantine_path, progress, stack)
    if optimize:
        progress("optimizing (compaction)")
        report.table_version = delta_io.optimize(spark, clean_path)

    progress("computing shard skew and feature statistics")
    _table_statistics(spark, spec, report, clean_path)
    report.seconds = round(time.monotonic() - started, 2)
    record_run(spark, lake, spec.name, report)
    return report


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


def record_run(spark: SparkSession, lake: Lake, dataset: str, report: IngestReport) -> None:
    """Upsert the run's report (counts, versions, statistics) into the dataset's ingest_runs table."""
    row = (report.run_id, dataset, report.table_version, report.quarantine_version, report.rows_read,
           report.clean_rows, report.quarantined, report.duplicates_removed, report.rule_counts,
           report.shard_counts, float(report.skew_ratio), json.dumps(report.to_dict(), sort_keys=True, default=str))
    path = lake.table(dataset, "ingest_runs")
    delta_io.retry_on_conflict(lambda: delta_io.ensure_table(spark, path, RUNS_SCHEMA), path)
    delta_io.merge_by_key(spark, path, spark.createDataFrame([row], RUNS_SCHEMA), ["run_id"])


def feature_stats_for(spark: SparkSession, lake: Lake, spec: DatasetSpec, version: int) -> FeatureStats:
    """Statistics of one clean-table version: as the ingest recorded them, else fitted now."""
    runs_path = lake.table(spec.name, "ingest_runs")
    if delta_io.table_exists(spark, runs_path):
        row = (delta_io.read_version(spark, runs_path).where(F.col("table_version") == version)
               .orderBy(F.col("run_id").desc()).select("report_json").first())
        if row is not None:
            return FeatureStats.from_dict(json.loads(row[0])["feature_stats"])
    version_df = delta_io.read_version(spark, lake.table(spec.name, "clean"), version)
    return fit_feature_stats(training_rows(version_df), spec.features.numeric, spec.features.categorical,
                             spec.features.max_categories)
