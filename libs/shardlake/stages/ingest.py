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
4. The marked rows are cached and one aggregation computes every count of the report and the
   fill statistics of the training split. In fail_fast mode the first bad row raises inside
   this pass, before any table exists or changes. The observed record count must equal the sum
   of the fates.
5. The clean rows are classified against the table (new, same, newer, older, in conflict: the
   in-batch rule, ``keys``) and MERGEd; the quarantine gets the rejected rows and those that
   lose against the table, by record id. Each commit is checked against what Delta recorded
   (rows inserted, updated, the row-count change); on any failure the run's own commits (found
   by run id in the commit metadata) are undone, never a concurrent writer's.
6. Rows per shard come from the Delta log (no scan); feature statistics of the training split
   of the new version are stored with the run in the ``ingest_runs`` table.

The clean table is partitioned by (split, shard). Split first: training reads one split's
files and never lists the others. Shard second: it is ``pmod(xxhash64(key), shards)``, a pure
function of the key, so a MERGE condition that names it prunes to the partitions a batch can
touch, and a shard can be read, compacted or rebuilt alone.
"""
from __future__ import annotations

import json
import logging
import re
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from uuid import uuid4

from pyspark import StorageLevel
from pyspark.sql import DataFrame, Observation, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from shardlake import delta_io, layout
from shardlake.config import DatasetSpec, JoinSpec
from shardlake.lake import Lake
from shardlake.reading import read_parsed
from shardlake.stages import ingest_write as W
from shardlake.stages.ingest_write import QUARANTINE_SCHEMA, RUNS_SCHEMA, table_constraints  # noqa: F401
from shardlake.transforms import clean as C
from shardlake.transforms import parse as P
from shardlake.transforms.stats import (FeatureStats, fill_aggregates, fill_values_from, fit_feature_stats,
                                        is_training, training_rows)

log = logging.getLogger(__name__)

class IngestError(RuntimeError):
    """The ingest refused to write: bad rows in fail_fast mode, a join source that is not unique,
    or accounting that does not add up."""


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
    conflicts: int = 0
    blank_lines: int = 0
    header_lines: int = 0
    write_mode: str = ""
    rows_merged: int = 0
    rows_inserted: int = 0
    rows_updated: int = 0
    quarantine_inserted: int = 0
    files: dict[str, dict[str, int]] = field(default_factory=dict)
    joins: dict[str, dict[str, int]] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def _kind_counts(parsed: DataFrame) -> tuple[DataFrame, Observation]:
    """``parsed`` observed: records, blank lines and header lines counted as they are read."""
    observation = Observation("records_read")
    kind = F.col(P.RECORD_KIND)
    observed = parsed.observe(observation, *[F.count(F.when(kind == F.lit(k), 1)).alias(k)
                                             for k in (P.RECORD, P.BLANK, P.HEADER)])
    return observed, observation


def _records(parsed: DataFrame) -> DataFrame:
    return parsed.where(F.col(P.RECORD_KIND) == F.lit(P.RECORD)).drop(P.RECORD_KIND)


def join_summary(parsed: DataFrame, join: JoinSpec) -> dict[str, int]:
    """What a join source held: records, rows that did not parse, blank/header lines, duplicate keys.

    ``duplicate_keys`` counts rows beyond the first of a key (exact copies and conflicting rows
    alike): the rows a unique join source must not have.
    """
    kind, ok = F.col(P.RECORD_KIND), F.size(F.col(P.PARSE_ERRORS)) == 0
    usable = (kind == P.RECORD) & ok
    # One job: a struct of the keys is never null, so keys holding nulls count as values too.
    row = parsed.agg(
        F.count(F.when(kind == P.RECORD, 1)).alias("records"),
        F.count(F.when((kind == P.RECORD) & ~ok, 1)).alias("parse_errors"),
        F.count(F.when(kind != P.RECORD, 1)).alias("blank_or_header_lines"),
        F.count(F.when(usable, 1)).alias("_usable"),
        F.count_distinct(F.when(usable, F.struct(*list(join.keys.values())))).alias("_keys"),
    ).first().asDict()
    row["duplicate_keys"] = row.pop("_usable") - row.pop("_keys")
    row["used"] = row["records"] - row["parse_errors"] - (row["duplicate_keys"] if join.dedupe else 0)
    return {k: int(v) for k, v in row.items()}


def join_table(parsed: DataFrame, join: JoinSpec) -> DataFrame:
    """A parsed join source reduced to its records without parse errors, unique on its join keys.

    Give it a cached ``parsed``: without that barrier the optimizer pushes the "parsed without
    error" filter below the parse and inlines the CSV parser into it once per column it checks.
    """
    usable = _records(parsed).where(F.size(F.col(P.PARSE_ERRORS)) == 0).drop(*P.RAW_COLUMNS, P.PARSE_ERRORS)
    return C.unique_by(usable, list(join.keys.values())) if join.dedupe else usable


def _check_join(join: JoinSpec, summary: dict[str, int]) -> None:
    """Refuse a join source declared unique (dedupe: false) that is not: it would multiply rows."""
    if not join.dedupe and summary["duplicate_keys"]:
        raise IngestError(
            f"join {join.name!r} ({join.source.path}): {summary['duplicate_keys']} rows repeat a join key "
            f"{list(join.keys.values())}, but the join has dedupe: false, which declares the keys unique; "
            "a left row would be multiplied by each match. Fix the source, or set dedupe: true to keep one row "
            "per key (the others are counted in the report). Nothing was written.")


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


def shard_skew(counts: dict[int, int]) -> float:
    """max/mean of rows per shard (1.0 is perfectly even)."""
    if not counts:
        return 0.0
    mean = sum(counts.values()) / len(counts)
    return max(counts.values()) / mean if mean else 0.0


FATES = (C.CLEAN, C.INVALID, C.DUPLICATE, C.SUPERSEDED, C.CONFLICT)


def _accounting(rule_names: list[str], fill_spec: dict, cluster_by: list[str]) -> list:
    """The aggregates of the whole report: rows per fate, rows per broken rule, fill statistics.

    Observed while the marked rows are staged, so they cost no pass of their own. Fill
    statistics use the clean rows of the training split only, so nothing is learnt from
    validation or test rows.
    """
    fate = F.col(C.FATE)
    aggs = [F.count(F.when(fate == F.lit(name), 1)).alias(f"fate:{name}") for name in FATES]
    aggs += [F.count(F.when(F.array_contains(F.col(C.VIOLATIONS), rule), 1)).alias(f"rule:{rule}")
             for rule in rule_names]
    aggs += fill_aggregates(fill_spec, where=(fate == F.lit(C.CLEAN)) & is_training())
    clean = fate == F.lit(C.CLEAN)
    return aggs + [f(F.when(clean, F.col(c))).alias(f"{f.__name__}:{c}") for c in cluster_by for f in (F.min, F.max)]


def _ranges(row: dict, cluster_by: list[str]) -> dict[str, tuple[object, object]]:
    """The clean rows' (min, max) of each ``cluster_by`` column: what a MERGE prunes the table by."""
    return {c: (row[f"min:{c}"], row[f"max:{c}"]) for c in cluster_by}


def _per_file(marked: DataFrame) -> dict[str, dict[str, int]]:
    """Rows of each source file by fate (a small aggregation over two staged columns)."""
    rows = marked.groupBy("_source_file", C.FATE).count().collect()
    files: dict[str, dict[str, int]] = {}
    for row in rows:
        files.setdefault(row["_source_file"], {})[row[C.FATE]] = int(row["count"])
    return files


def _fail_fast_message(err: Exception) -> str | None:
    """The message of a fail_fast abort raised inside a Spark job, else None."""
    found = re.search(re.escape(C.FAIL_FAST_MARK) + r"[^\n]*", str(err))
    return found.group(0) if found else None


def _fill_report(report: IngestReport, row: dict, spec: DatasetSpec, fill_spec: dict) -> None:
    report.clean_rows = int(row[f"fate:{C.CLEAN}"])
    report.invalid = int(row[f"fate:{C.INVALID}"])
    report.superseded = int(row[f"fate:{C.SUPERSEDED}"])
    report.conflicts = int(row[f"fate:{C.CONFLICT}"])
    report.duplicates_removed = int(row[f"fate:{C.DUPLICATE}"])
    report.quarantined = report.invalid + report.superseded + report.conflicts
    report.rule_counts = {r: int(row[f"rule:{r}"]) for r in all_rule_names(spec) if row[f"rule:{r}"]}
    report.fill_values = fill_values_from(row, fill_spec)


def _set_key_rule_counts(report: IngestReport) -> None:
    for rule, count in ((C.SUPERSEDED_RULE, report.superseded), (C.CONFLICT_RULE, report.conflicts)):
        if count:
            report.rule_counts[rule] = count
        else:
            report.rule_counts.pop(rule, None)


def _check_counts(report: IngestReport) -> None:
    """Records read (observed as read, before any join) = clean + quarantined + duplicates, exactly."""
    fated = report.clean_rows + report.quarantined + report.duplicates_removed
    if fated != report.rows_read:
        raise IngestError(
            f"accounting mismatch: {report.rows_read} records read, but clean {report.clean_rows} + quarantined "
            f"{report.quarantined} + duplicates {report.duplicates_removed} = {fated} (a join multiplied or "
            "dropped rows?); nothing was written")


def _stage(spark: SparkSession, report: IngestReport, marked: DataFrame, spec: DatasetSpec,
           observation: Observation, folder: Path) -> tuple[DataFrame, dict[str, tuple[object, object]]]:
    """Write the marked rows once, as Parquet under ``folder``, and fill the report's counts as they pass.

    The one pass over the data: reading, parsing, joins, rules and the key window run while the
    rows are written, and observations count them on the way (records as read, fates, rules,
    fill statistics). Both tables are written from these files afterwards (columnar: each write
    reads only what it needs), and the accounting is checked before either. fail_fast aborts
    surface here, before any table exists or changes.
    """
    fill_spec = {c: (f.strategy, f.value) for c, f in spec.fill.items()}
    accounting = Observation("accounting")
    try:
        aggregates = _accounting(all_rule_names(spec), fill_spec, spec.cluster_by)
        marked.observe(accounting, *aggregates).write.parquet(str(folder))
    except Exception as err:  # a Spark job failure carries the fail_fast message in its text
        message = _fail_fast_message(err)
        if message is None:
            raise
        raise IngestError(f"{message}; no table was created or changed") from None
    seen = observation.get
    report.rows_read, report.blank_lines, report.header_lines = (int(seen[k]) for k in (P.RECORD, P.BLANK, P.HEADER))
    _fill_report(report, accounting.get, spec, fill_spec)
    _set_key_rule_counts(report)
    staged = spark.read.parquet(str(folder))
    report.files = _per_file(staged)
    _check_counts(report)
    return staged, _ranges(accounting.get, spec.cluster_by)


def clean_candidates(marked: DataFrame, fill_values: dict) -> DataFrame:
    """Clean-fate rows with missing values filled and the content hash, raw text kept alongside."""
    columns = clean_schema(marked)
    kept = marked.where(F.col(C.FATE) == F.lit(C.CLEAN))
    hashed = C.with_row_hash(C.fill_missing(kept, fill_values), [c for c in columns if c not in (C.SHARD, C.SPLIT)])
    return hashed.select(*columns, C.ROW_HASH, *P.RAW_COLUMNS, C.VIOLATIONS, C.FATE)


def clean_rows(marked: DataFrame, fill_values: dict) -> DataFrame:
    """The rows for the clean table: clean fate, table columns, missing values filled, content hash."""
    return clean_candidates(marked, fill_values).select(*clean_schema(marked), C.ROW_HASH)


def _ensure_tables(spark: SparkSession, spec: DatasetSpec, schema, clean_path: str, quarantine_path: str) -> None:
    # Two first runs may create the same table at once: the loser retries and finds it there.
    delta_io.retry_on_conflict(lambda: delta_io.ensure_table(
        spark, clean_path, schema, (C.SPLIT, C.SHARD), table_constraints(spec), spec.allow_schema_evolution,
        properties=layout.layout_properties(spec)), clean_path)
    delta_io.retry_on_conflict(lambda: delta_io.ensure_table(spark, quarantine_path, QUARANTINE_SCHEMA),
                               quarantine_path)


def _write_tables(spark: SparkSession, spec: DatasetSpec, report: IngestReport,
                  rows: tuple[DataFrame, DataFrame, T.StructType], paths: tuple[str, str],
                  ranges: dict[str, tuple[object, object]], progress: Callable[[str], None], stack: ExitStack) -> None:
    """Clean table, then the quarantine (with the rows that lost against the table); check each commit
    against what Delta recorded; undo this run's own commits on any failure. ``ranges``: the batch's
    range of each ``cluster_by`` column, the only part of the table its keys can match."""
    clean_path, quarantine_path = paths
    candidates, rejected, schema = rows
    _ensure_tables(spark, spec, schema, clean_path, quarantine_path)
    report.write_mode = "merge into empty table" if delta_io.is_empty(spark, clean_path) else "merge"
    before = {path: delta_io.latest_version(spark, path) for path in (clean_path, quarantine_path)}
    with delta_io.commit_metadata(spark, {"run_id": report.run_id, "fill_values": report.fill_values}):
        try:
            progress(f"writing the clean table ({report.write_mode})")
            clean, losers = W.write_clean(spark, clean_path, candidates, spec, stack, report.clean_rows, ranges)
            report.table_version = clean.version
            W.check_commit(spark, clean_path, clean)
            _count_losers(report, losers)
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
    report.quarantine_version = _latest_if_none(spark, quarantine_path, report.quarantine_version)
    report.table_version = _latest_if_none(spark, clean_path, report.table_version)


def _count_losers(report: IngestReport, losers: DataFrame) -> None:
    """Clean rows that lost against the table's row of their key move from clean to the quarantine."""
    lost = {r[0]: int(r[1]) for r in losers.groupBy(C.FATE).count().collect()}
    moved = sum(lost.values())
    report.clean_rows -= moved
    report.superseded += lost.get(C.SUPERSEDED, 0)
    report.conflicts += lost.get(C.CONFLICT, 0)
    report.quarantined += moved
    _set_key_rule_counts(report)


def _latest_if_none(spark: SparkSession, path: str, version: int | None) -> int:
    """The version this run produced, or (when it committed nothing) the table's current one."""
    return delta_io.latest_version(spark, path) if version is None else version


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


def _read_joins(spark: SparkSession, spec: DatasetSpec, lake: Lake, base_dir: Path, report: IngestReport,
                stack: ExitStack) -> list[tuple[JoinSpec, DataFrame]]:
    """Each join source parsed, cached, summarised in the report and checked; then made unique."""
    joins = []
    for join in spec.joins:
        parsed = stack.enter_context(_cached(read_parsed(
            spark, join.source, [(c.name, c.type) for c in join.columns], lake.staging(), base_dir, False)))
        report.joins[join.name] = join_summary(parsed, join)
        _check_join(join, report.joins[join.name])
        joins.append((join, join_table(parsed, join)))
    return joins


def _staging_folder(lake: Lake, run_id: str, stack: ExitStack) -> Path:
    """A folder of this run's own under the lake's staging area, removed when the run ends (either way)."""
    folder = lake.staging("ingest", f"{re.sub(r'[^A-Za-z0-9_.-]', '_', run_id)}-{uuid4().hex[:12]}")
    stack.callback(shutil.rmtree, folder, True)
    return folder


def _check_existing(spark: SparkSession, spec: DatasetSpec, marked: DataFrame, clean_path: str) -> bool:
    """Refuse a schema or layout change before the expensive pass; True when the table holds rows."""
    if not delta_io.table_exists(spark, clean_path):
        return False
    delta_io.check_schema(spark, clean_path, clean_rows(marked, {}).schema, spec.allow_schema_evolution)
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
) -> IngestReport:
    """Read, clean, shard and write the dataset into its Delta tables; verify the accounting.

    ``mode='fail_fast'`` aborts at the first row that breaks a rule, before any table is created
    or changed. Re-running on the same input leaves table content identical and commits nothing.
    A layout change (key, shards, splits, salt) is refused before any write (``layout``). If a
    write or the accounting check fails, the commits this run made are undone (RESTORE to the
    version before each), unless another writer committed on top of them: then the error says so.
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
        parsed, observation = _kind_counts(read_parsed(spark, spec.source, columns, lake.staging(), base_dir,
                                                       spec.allow_schema_evolution))
        joins = _read_joins(spark, spec, lake, base_dir, report, stack)
        flagged = flag_records(_records(parsed), spec, joins)
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
        schema = clean_rows(marked, {}).schema
        staged, ranges = _stage(spark, report, marked, spec, observation, _staging_folder(lake, run_id, stack))
        rejected = staged.where(F.col(C.FATE).isin(*C.REJECTED))
        _write_tables(spark, spec, report, (clean_candidates(staged, report.fill_values), rejected, schema),
                      (clean_path, quarantine_path), ranges, progress, stack)
    if optimize:
        progress("optimizing (compaction)")
        report.table_version = delta_io.optimize(spark, clean_path, spec.cluster_by)

    progress("computing shard skew")
    _table_statistics(spark, spec, report, clean_path)
    report.seconds = round(time.monotonic() - started, 2)
    W.record_run(spark, lake.table(spec.name, "ingest_runs"), report.to_dict())
    return report


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
