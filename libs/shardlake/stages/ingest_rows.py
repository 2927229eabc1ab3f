"""The ingest's row plan: parsed records to rows marked with their fate, and the clean rows from them.

Pure DataFrame steps (``read_joins`` aside, which reads, caches and summarises the join sources)
that ``ingest.run_ingest`` chains: count the records as read, join, derive and check the rules
(``flag_records``), and after the staging pass pick the clean rows with their fill and content hash.
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from pyspark import StorageLevel
from pyspark.sql import DataFrame, Observation, SparkSession
from pyspark.sql import functions as F

from shardlake.config import DatasetSpec, JoinSpec
from shardlake.lake import Lake
from shardlake.reading import read_parsed
from shardlake.stages.ingest_report import IngestError, IngestReport, join_summary, required_columns
from shardlake.transforms import clean as C
from shardlake.transforms import parse as P


def kind_counts(parsed: DataFrame) -> tuple[DataFrame, Observation]:
    """``parsed`` observed: records, blank lines and header lines counted as they are read."""
    observation = Observation("records_read")
    kind = F.col(P.RECORD_KIND)
    observed = parsed.observe(observation, *[F.count(F.when(kind == F.lit(k), 1)).alias(k)
                                             for k in (P.RECORD, P.BLANK, P.HEADER)])
    return observed, observation


def records(parsed: DataFrame) -> DataFrame:
    """The rows that are records (not blank or repeated header lines), without their kind."""
    return parsed.where(F.col(P.RECORD_KIND) == F.lit(P.RECORD)).drop(P.RECORD_KIND)


def join_table(parsed: DataFrame, join: JoinSpec) -> DataFrame:
    """A parsed join source reduced to its records without parse errors, unique on its join keys.

    Give it a cached ``parsed``: without that barrier the optimizer pushes the "parsed without
    error" filter below the parse and inlines the CSV parser into it once per column it checks.
    """
    usable = records(parsed).where(F.size(F.col(P.PARSE_ERRORS)) == 0).drop(*P.RAW_COLUMNS, P.PARSE_ERRORS)
    return C.unique_by(usable, list(join.keys.values())) if join.dedupe else usable


def check_join(join: JoinSpec, summary: dict[str, int]) -> None:
    """Refuse a join source declared unique (dedupe: false) that is not: it would multiply rows."""
    if not join.dedupe and summary["duplicate_keys"]:
        raise IngestError(
            f"join {join.name!r} ({join.source.path}): {summary['duplicate_keys']} rows repeat a join key "
            f"{list(join.keys.values())}, but the join has dedupe: false, which declares the keys unique; "
            "a left row would be multiplied by each match. Fix the source, or set dedupe: true to keep one row "
            "per key (the others are counted in the report). Nothing was written.")


@contextmanager
def cached(df: DataFrame) -> Iterator[DataFrame]:
    """``df`` persisted (memory, spilling to disk) for the block, released afterwards."""
    persisted = df.persist(StorageLevel.MEMORY_AND_DISK)
    try:
        yield persisted
    finally:
        persisted.unpersist()


def flag_records(parsed: DataFrame, spec: DatasetSpec, joins: list[tuple[JoinSpec, DataFrame]]) -> DataFrame:
    """Parsed records enriched by joins and derived columns, with ``_violations`` and shard/split."""
    df = parsed
    for join, other in joins:
        df = C.left_join(df, other, join.keys, join.select)
    df = C.derive(df, spec.derived)
    rules = spec.rules
    df = C.flag_violations(
        df,
        required=required_columns(spec),
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


def clean_candidates(marked: DataFrame, fill_values: dict) -> DataFrame:
    """Clean-fate rows with missing values filled and the content hash, raw text kept alongside."""
    columns = clean_schema(marked)
    kept = marked.where(F.col(C.FATE) == F.lit(C.CLEAN))
    hashed = C.with_row_hash(C.fill_missing(kept, fill_values), [c for c in columns if c not in (C.SHARD, C.SPLIT)])
    return hashed.select(*columns, C.ROW_HASH, *P.RAW_COLUMNS, C.VIOLATIONS, C.FATE)


def clean_rows(marked: DataFrame, fill_values: dict) -> DataFrame:
    """The rows for the clean table: clean fate, table columns, missing values filled, content hash."""
    return clean_candidates(marked, fill_values).select(*clean_schema(marked), C.ROW_HASH)


def read_joins(spark: SparkSession, spec: DatasetSpec, lake: Lake, base_dir: Path, report: IngestReport,
               stack: ExitStack) -> list[tuple[JoinSpec, DataFrame]]:
    """Each join source parsed, cached, summarised in the report and checked; then made unique."""
    joins = []
    for join in spec.joins:
        parsed = stack.enter_context(cached(read_parsed(
            spark, join.source, [(c.name, c.type) for c in join.columns], lake.scratch(), base_dir, False)))
        report.joins[join.name] = join_summary(parsed, join)
        check_join(join, report.joins[join.name])
        joins.append((join, join_table(parsed, join)))
    return joins
