"""The ingest stage: raw source -> clean, sharded Delta table plus a quarantine, with exact accounting."""
from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
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
from shardlake.transforms.stats import FeatureStats, fit_feature_stats, fit_fill_values, training_rows

SUPERSEDED = "superseded_by_newer_key"


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

    def to_dict(self) -> dict:
        return asdict(self)


def _read_source(spark: SparkSession, source: SourceSpec, names: list[str], lake: Lake, base_dir: Path,
                 allow_evolution: bool) -> DataFrame:
    files = sources.materialise(sources.resolve_files(source.path, base_dir), source.compression, lake.staging())
    if source.format == "csv" and source.header:
        sources.check_csv_headers(files, names, source.delimiter, source.encoding, allow_evolution)
    return sources.read_raw_records(spark, files, source.format, source.header)


def parse_records(raw: DataFrame, source: SourceSpec, columns: list[tuple[str, str]]) -> DataFrame:
    """Raw records to declared, typed columns plus ``_parse_errors``."""
    fields = P.split_fields(raw, [n for n, _ in columns], source.format, source.delimiter)
    return P.cast_columns(fields, columns, source.null_values)


def _read_join(spark: SparkSession, join: JoinSpec, lake: Lake, base_dir: Path) -> DataFrame:
    raw = _read_source(spark, join.source, [c.name for c in join.columns], lake, base_dir, False)
    parsed = parse_records(raw, join.source, [(c.name, c.type) for c in join.columns])
    usable = parsed.where(F.size(F.col(P.PARSE_ERRORS)) == 0).drop(*P.RAW_COLUMNS, P.PARSE_ERRORS)
    return C.unique_by(usable, list(join.keys.values())) if join.dedupe else usable


def flag_records(parsed: DataFrame, spec: DatasetSpec, joins: list[tuple[JoinSpec, DataFrame]]) -> DataFrame:
    """Parsed records enriched by joins and derived columns, with ``_violations`` and shard/split."""
    df = parsed
    for join, other in joins:
        df = C.left_join(df, other, join.keys, join.select)
    df = C.derive(df, spec.derived)
    rules = spec.rules
    df = C.flag_violations(
        df,
        required=[*spec.key, *rules.required],
        ranges={c: (r.min, r.max) for c, r in rules.ranges.items()},
        allowed=rules.allowed,
        patterns=rules.patterns,
        finite=rules.finite,
    )
    return C.add_shard_and_split(df, spec.key, spec.shards, spec.splits.train, spec.splits.validation,
                                 spec.splits.salt)


def clean_schema(flagged: DataFrame) -> list[str]:
    """Data columns of the clean table, in order (raw text and bookkeeping excluded)."""
    return [c for c in flagged.columns if c not in (*P.RAW_COLUMNS, C.VIOLATIONS)]


def _rule_counts(flagged: DataFrame) -> tuple[int, int, dict[str, int]]:
    """Rows read, rows breaking any rule, and rows caught per rule (a row may break several)."""
    totals = flagged.agg(F.count(F.lit(1)).alias("rows"),
                         F.count(F.when(F.size(C.VIOLATIONS) > 0, 1)).alias("invalid")).first()
    per_rule = flagged.select(F.explode(F.col(C.VIOLATIONS)).alias("rule")).groupBy("rule").count().collect()
    counts = {r["rule"]: int(r["count"]) for r in sorted(per_rule, key=lambda r: r["rule"])}
    return int(totals["rows"]), int(totals["invalid"]), counts


def _constraints(spec: DatasetSpec) -> dict[str, str]:
    checks = {
        "shard_in_range": f"{C.SHARD} >= 0 AND {C.SHARD} < {spec.shards}",
        "split_known": f"{C.SPLIT} IN ('train', 'validation', 'test')",
    }
    checks["key_not_null"] = " AND ".join(f"{k} IS NOT NULL" for k in spec.key)
    for column, bounds in spec.rules.ranges.items():
        if column in spec.column_names:
            if bounds.min is not None:
                checks[f"{column}_min"] = f"{column} IS NULL OR {column} >= {bounds.min}"
            if bounds.max is not None:
                checks[f"{column}_max"] = f"{column} IS NULL OR {column} <= {bounds.max}"
    return checks


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


def _check_accounting(spark: SparkSession, report: IngestReport, clean_path: str, quarantine_path: str,
                      clean_source_rows: int, quarantine_source_rows: int) -> None:
    """rows read = clean + quarantined + duplicates, both as counted and as Delta's MERGE recorded it."""
    merged_clean = int(delta_io.commit_metrics(spark, clean_path, report.table_version).get("numSourceRows", -1))
    merged_quarantine = int(delta_io.commit_metrics(spark, quarantine_path, report.quarantine_version)
                            .get("numSourceRows", -1))
    counted = report.clean_rows + report.quarantined + report.duplicates_removed
    if counted != report.rows_read or (merged_clean, merged_quarantine) != (clean_source_rows, quarantine_source_rows):
        raise IngestError(
            f"accounting mismatch: read {report.rows_read}, clean {report.clean_rows} (merged {merged_clean}), "
            f"quarantined {report.quarantined} (merged {merged_quarantine}), duplicates {report.duplicates_removed}"
        )


def _versions_before(spark: SparkSession, paths: list[str]) -> dict[str, int | None]:
    return {p: delta_io.latest_version(spark, p) if delta_io.table_exists(spark, p) else None for p in paths}


def _restore(spark: SparkSession, before: dict[str, int | None]) -> None:
    """Put tables back to their versions before this run, so a failed run leaves nothing half-written."""
    for path, version in before.items():
        if version is not None and delta_io.latest_version(spark, path) != version:
            spark.sql(f"RESTORE TABLE delta.`{path}` TO VERSION AS OF {version}")


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
    """Read, clean, shard and MERGE the dataset into its Delta tables; verify the accounting.

    ``mode='fail_fast'`` aborts before any write when a row breaks a rule, leaving every table
    as it was. Re-running on the same input leaves table content identical. If a write or the
    accounting check fails, both tables are restored to their versions before the run.
    """
    started = time.monotonic()
    report = IngestReport(run_id=run_id, dataset=spec.name)
    columns = [(c.name, c.type) for c in spec.columns]
    progress("reading the source")
    raw = _read_source(spark, spec.source, spec.column_names, lake, base_dir, spec.allow_schema_evolution)
    joins = [(j, _read_join(spark, j, lake, base_dir)) for j in spec.joins]
    flagged = flag_records(parse_records(raw, spec.source, columns), spec, joins)
    flagged = flagged.persist(StorageLevel.MEMORY_AND_DISK)
    progress("parsing and checking rules")
    report.rows_read, invalid, report.rule_counts = _rule_counts(flagged)
    if mode == "fail_fast" and invalid:
        example = flagged.where(F.size(C.VIOLATIONS) > 0).select("_source_file", "_raw", C.VIOLATIONS).first()
        flagged.unpersist()
        raise IngestError(f"fail_fast: {invalid} row(s) broke rules {report.rule_counts}; "
                          f"first in {example[0]}: {list(example[2])} raw={example[1][:200]!r}; no table was changed")

    data_columns = clean_schema(flagged)
    valid = flagged.where(F.size(C.VIOLATIONS) == 0).drop(C.VIOLATIONS)
    ranked = C.rank_key_duplicates(C.drop_exact_duplicates(valid), spec.key, spec.order_by)
    ranked = ranked.persist(StorageLevel.MEMORY_AND_DISK)
    progress("removing duplicates")
    rank_counts = ranked.agg(F.count(F.lit(1)).alias("distinct"),
                             F.count(F.when(F.col("_key_rank") > 1, 1)).alias("superseded")).first()
    superseded_rows = int(rank_counts["superseded"])
    report.duplicates_removed = report.rows_read - invalid - int(rank_counts["distinct"])
    report.clean_rows = int(rank_counts["distinct"]) - superseded_rows
    report.quarantined = invalid + superseded_rows
    if superseded_rows:
        report.rule_counts[SUPERSEDED] = superseded_rows

    kept = ranked.where(F.col("_key_rank") == 1).drop("_key_rank")
    superseded = ranked.where(F.col("_key_rank") > 1).withColumn(C.VIOLATIONS, F.array().cast("array<string>"))
    fill_spec = {c: (f.strategy, f.value) for c, f in spec.fill.items()}
    report.fill_values = fit_fill_values(training_rows(kept), fill_spec)
    clean_df = C.with_row_hash(C.fill_missing(kept.select(*data_columns), report.fill_values),
                               [c for c in data_columns if c not in (C.SHARD, C.SPLIT)])
    quarantine_df = C.quarantine_records(flagged.where(F.size(C.VIOLATIONS) > 0), run_id).unionByName(
        C.quarantine_records(superseded, run_id, SUPERSEDED))

    clean_path = lake.table(spec.name, "clean")
    quarantine_path = lake.table(spec.name, "quarantine")
    delta_io.ensure_table(spark, clean_path, clean_df.schema, (C.SPLIT, C.SHARD), _constraints(spec),
                          spec.allow_schema_evolution)
    delta_io.ensure_table(spark, quarantine_path, QUARANTINE_SCHEMA)
    before = _versions_before(spark, [clean_path, quarantine_path])
    try:
        with delta_io.commit_metadata(spark, {"run_id": run_id, "fill_values": report.fill_values}):
            progress("writing the quarantine table")
            report.quarantine_version = delta_io.merge_by_key(
                spark, quarantine_path, quarantine_df, ["record_id"], update=False)
            progress("merging the clean table")
            report.table_version = delta_io.merge_by_key(
                spark, clean_path, clean_df, spec.key, prune_on=(C.SPLIT, C.SHARD),
                changed_when=f"t.{C.ROW_HASH} <> s.{C.ROW_HASH}")
        _check_accounting(spark, report, clean_path, quarantine_path, report.clean_rows, report.quarantined)
    except BaseException:
        _restore(spark, before)
        raise
    finally:
        flagged.unpersist()
        ranked.unpersist()
    if optimize:
        progress("optimizing (compaction)")
        spark.sql(f"OPTIMIZE delta.`{clean_path}`")
        report.table_version = delta_io.latest_version(spark, clean_path)

    progress("computing shard skew and feature statistics")
    version_df = delta_io.read_version(spark, clean_path, report.table_version)
    counts = version_df.groupBy(C.SHARD).count().collect()
    report.shard_counts = {int(r[C.SHARD]): int(r["count"]) for r in sorted(counts, key=lambda r: r[C.SHARD])}
    report.skew_ratio = round(shard_skew(report.shard_counts), 4)
    report.skew_warning = report.skew_ratio > spec.skew_warn_ratio
    stats = fit_feature_stats(training_rows(version_df), spec.features.numeric, spec.features.categorical,
                              spec.features.max_categories)
    report.feature_stats = stats.to_dict()
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
    delta_io.ensure_table(spark, path, RUNS_SCHEMA)
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
