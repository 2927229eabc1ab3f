"""Cleaning rules, joins, duplicates, sharding and splits: pure DataFrame transforms.

Rows are never dropped here. Each transform adds what it found (``_violations``, ``_fate``) and
the stage decides where a row goes, so that every row read can be accounted for.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T

from shardlake.transforms.parse import PARSE_ERRORS, RAW_COLUMNS, error_list

VIOLATIONS = "_violations"
SHARD = "shard"
SPLIT = "split"
ROW_HASH = "_row_hash"
FATE = "_fate"
SPLITS = ("train", "validation", "test")

# What happens to a row: kept, rejected by a rule, removed as an exact copy, replaced by a newer
# row of the same key, or in conflict with another row of its key that nothing orders it against.
# Only ``clean`` rows reach the clean table; ``invalid``, ``superseded`` and ``conflict`` rows go to
# the quarantine; ``duplicate`` rows are counted and dropped (an identical row is kept).
CLEAN, INVALID, DUPLICATE, SUPERSEDED, CONFLICT = "clean", "invalid", "duplicate", "superseded", "conflict"
REJECTED = (INVALID, SUPERSEDED, CONFLICT)
SUPERSEDED_RULE = "superseded_by_newer_key"
CONFLICT_RULE = "key_conflict"
FAIL_FAST_MARK = "shardlake fail_fast:"


def derive(df: DataFrame, expressions: Mapping[str, str]) -> DataFrame:
    """Add columns given as Spark SQL expressions (declared in the dataset config)."""
    return df.withColumns({name: F.expr(sql) for name, sql in expressions.items()}) if expressions else df


def left_join(df: DataFrame, other: DataFrame, on: Mapping[str, str], select: Sequence[str]) -> DataFrame:
    """Bring ``select`` columns of ``other`` in by ``on`` (left -> right); rows never multiply.

    ``other`` must be unique on its join columns (see ``unique_by``); rows without a match keep
    nulls, which the fill rules or the required rules then handle.
    """
    right = other.select(*[F.col(r).alias(f"_r_{r}") for r in on.values()], *[F.col(c) for c in select])
    condition = [F.col(left) == F.col(f"_r_{right_name}") for left, right_name in on.items()]
    joined = df.join(right, on=condition, how="left")
    return joined.drop(*[f"_r_{r}" for r in on.values()])


def unique_by(df: DataFrame, columns: Sequence[str]) -> DataFrame:
    """One row per ``columns`` value (the first by all columns, deterministic)."""
    window = Window.partitionBy(*columns).orderBy(*[F.col(c).asc_nulls_last() for c in df.columns])
    return df.withColumn("_n", F.row_number().over(window)).where(F.col("_n") == 1).drop("_n")


def _rule_checks(
    required: Sequence[str],
    ranges: Mapping[str, tuple[float | None, float | None]],
    allowed: Mapping[str, Sequence[str]],
    patterns: Mapping[str, str],
    finite: Sequence[str],
) -> dict[str, Column]:
    """Each rule's name and the condition under which a row breaks it, in report order."""
    checks = {f"required:{c}": F.col(c).isNull() for c in dict.fromkeys(required)}
    for column, (low, high) in ranges.items():
        bad = F.lit(False)
        if low is not None:
            bad = bad | (F.col(column) < F.lit(low))
        if high is not None:
            bad = bad | (F.col(column) > F.lit(high))
        checks[f"range:{column}"] = F.col(column).isNotNull() & bad
    for column, values in allowed.items():
        checks[f"allowed:{column}"] = F.col(column).isNotNull() & ~F.col(column).isin(list(values))
    for column, pattern in patterns.items():
        checks[f"pattern:{column}"] = F.col(column).isNotNull() & ~F.col(column).rlike(pattern)
    for column in finite:
        value = F.col(column).cast("double")
        checks[f"finite:{column}"] = F.isnan(value) | value.isin(float("inf"), float("-inf"))
    return checks


def rule_names(
    required: Sequence[str] = (),
    ranges: Mapping[str, object] | None = None,
    allowed: Mapping[str, object] | None = None,
    patterns: Mapping[str, object] | None = None,
    finite: Sequence[str] = (),
) -> list[str]:
    """Every rule name ``flag_violations`` can report for these rules (for per-rule counts)."""
    names = [f"required:{c}" for c in dict.fromkeys(required)]
    names += [f"range:{c}" for c in ranges or {}]
    names += [f"allowed:{c}" for c in allowed or {}]
    names += [f"pattern:{c}" for c in patterns or {}]
    names += [f"finite:{c}" for c in finite]
    return names


def flag_violations(
    df: DataFrame,
    required: Sequence[str] = (),
    ranges: Mapping[str, tuple[float | None, float | None]] | None = None,
    allowed: Mapping[str, Sequence[str]] | None = None,
    patterns: Mapping[str, str] | None = None,
    finite: Sequence[str] = (),
) -> DataFrame:
    """Replace ``_parse_errors`` by ``_violations``: every rule a row breaks, parse errors first.

    A row that did not parse is judged on its parse errors alone, since its values are unreliable.
    """
    # A row that breaks nothing (most of them) gets the empty list without building one entry per rule.
    rule_hits = error_list(_rule_checks(required, ranges or {}, allowed or {}, patterns or {}, finite))
    parsed_ok = F.size(F.col(PARSE_ERRORS)) == 0
    violations = F.when(parsed_ok, rule_hits).otherwise(F.col(PARSE_ERRORS))
    return df.withColumn(VIOLATIONS, violations).drop(PARSE_ERRORS)


def abort_on_violation(df: DataFrame) -> DataFrame:
    """fail_fast: evaluating the first row that breaks a rule raises an error naming it.

    The check sits inside ``_violations`` itself, so every later step that looks at a row's
    validity evaluates it: the job stops at the first bad row, before anything is written.
    """
    message = F.concat(
        F.lit(f"{FAIL_FAST_MARK} rules ["), F.array_join(F.col(VIOLATIONS), ", "), F.lit("] broken by record "),
        F.substring(F.col("_raw"), 1, 300), F.lit(" in "), F.col("_source_file"),
    )
    guarded = F.when(F.size(F.col(VIOLATIONS)) > 0, F.raise_error(message).cast("array<string>"))
    return df.withColumn(VIOLATIONS, guarded.otherwise(F.col(VIOLATIONS)))


def key_hash(key: Sequence[str]) -> Column:
    """64-bit hash of the key columns; shards and splits are functions of it alone."""
    return F.xxhash64(*[F.col(k) for k in key])


def add_shard_and_split(df: DataFrame, key: Sequence[str], shards: int,
                        train_pct: int, validation_pct: int, salt: str) -> DataFrame:
    """``shard = pmod(xxhash64(key), shards)``; split from a salted hash so it is independent of shard.

    Both depend on the key only, so a row keeps its shard and split when data grows or jobs re-run.
    """
    bucket = F.pmod(F.xxhash64(F.lit(salt), *[F.col(k) for k in key]), F.lit(100))
    split = (F.when(bucket < train_pct, F.lit("train"))
             .when(bucket < train_pct + validation_pct, F.lit("validation"))
             .otherwise(F.lit("test")))
    return df.withColumns({SHARD: F.pmod(key_hash(key), F.lit(shards)).cast("int"), SPLIT: split})


def data_columns(df: DataFrame) -> list[str]:
    """Columns that make up a row's content (raw text, bookkeeping, shard and split excluded)."""
    skip = {*RAW_COLUMNS, VIOLATIONS, FATE, SHARD, SPLIT, ROW_HASH, PARSE_ERRORS}
    return [c for c in df.columns if c not in skip]


def mark_duplicates(df: DataFrame, key: Sequence[str], order_by: str | None = None,
                    on_conflict: str = "quarantine") -> DataFrame:
    """Add ``_fate`` to every row: clean, invalid, duplicate, superseded or conflict.

    Valid rows of one key are ordered newest first by ``order_by`` (nulls oldest). A row equal
    in every data column to another is a ``duplicate`` (one copy stays). Rows older than the
    key's newest are ``superseded``. Among the newest (all rows, without ``order_by``), one
    distinct content is ``clean``; several distinct contents have no order between them, so
    nothing is picked silently: all are ``conflict`` (quarantined), unless ``on_conflict`` is
    ``keep_one``, which keeps the smallest content hash and supersedes the others, the same rule
    ``keys.incoming_wins`` applies against the table. Invalid rows keep ``invalid``.

    All of it is one window specification, so the rows are sorted once: partitioned by (key
    hash, shard, validity, key), where all but validity are functions of the key, so this groups
    exactly by key, and the one hash exchange on (shard, key) satisfies it (a single shuffle);
    ordered newest first (``order_by`` descending, nulls last), then by content hash and
    content, so the newest rows lead and equal contents are adjacent. The newest value is the
    first row's; several contents at the newest show as a smallest and a largest hash that
    differ.
    """
    content_cols = data_columns(df)
    # The key hash leads the partitioning: it does not change the groups (it is a function of the
    # key), but sorting on a 64-bit number first is much cheaper than on shard ints and key strings.
    group = Window.partitionBy(F.col("_key_hash"), F.col(SHARD), F.col("_valid"), *[F.col(k) for k in key])
    newest_first = [F.col(order_by).desc_nulls_last()] if order_by else []
    ordered = group.orderBy(*newest_first, F.col("_content_hash"), F.col("_content"))
    whole = ordered.rowsBetween(Window.unboundedPreceding, Window.unboundedFollowing)
    newest = F.col(order_by).eqNullSafe(F.first(order_by).over(whole)) if order_by else F.lit(True)
    at_newest = F.when(F.col("_newest"), F.col("_content_hash"))
    several_at_newest = F.min(at_newest).over(whole) != F.max(at_newest).over(whole)
    previous = F.lag(F.col("_content")).over(ordered)
    fate = (F.when(~F.col("_valid"), F.lit(INVALID))
            .when(F.col("_content").eqNullSafe(previous), F.lit(DUPLICATE))
            .when(~F.col("_newest"), F.lit(SUPERSEDED))
            .when(several_at_newest & F.lit(on_conflict != "keep_one"), F.lit(CONFLICT))
            .when(F.row_number().over(ordered) == 1, F.lit(CLEAN))
            .otherwise(F.lit(SUPERSEDED)))
    # The explicit exchange comes before the comparison columns are built, so they are computed
    # after the shuffle instead of travelling through it (they would double its size).
    prepared = df.repartition(F.col(SHARD), *[F.col(k) for k in key]).withColumns({
        "_key_hash": key_hash(key),
        "_valid": F.size(F.col(VIOLATIONS)) == 0,
        "_content": F.struct(*[F.col(c) for c in content_cols]),
        "_content_hash": F.xxhash64(*[F.col(c) for c in content_cols]),
    }).withColumn("_newest", newest)
    return prepared.withColumn(FATE, fate).drop("_key_hash", "_valid", "_content", "_content_hash", "_newest")


def with_row_hash(df: DataFrame, columns: Sequence[str]) -> DataFrame:
    """Hash of a row's data columns, so a MERGE rewrites only rows whose content changed."""
    return df.withColumn(ROW_HASH, F.xxhash64(*[F.col(c) for c in columns]))


def fill_missing(df: DataFrame, values: Mapping[str, object]) -> DataFrame:
    """Fill nulls (and NaN in float columns) of the given columns with values computed elsewhere."""
    if not values:
        return df
    filled = {}
    for column, value in values.items():
        current = F.col(column)
        kind = df.schema[column].dataType
        missing = current.isNull()
        if isinstance(kind, (T.DoubleType, T.FloatType)):
            missing = missing | F.isnan(current)
        filled[column] = F.when(missing, F.lit(value).cast(kind)).otherwise(current)
    return df.withColumns(filled)


def quarantine_records(df: DataFrame, run_id: str) -> DataFrame:
    """Rows for the quarantine table: raw record, source, broken rules, a stable record id, the run.

    ``df`` holds rejected rows (``_fate`` invalid, superseded or conflict). The record id hashes file, raw
    text and the occurrence number of that text in the file, so identical bad lines are all kept
    and a re-run of the same input finds the same ids (the MERGE inserts nothing twice).
    """
    rules = (F.when(F.col(FATE) == F.lit(SUPERSEDED), F.array(F.lit(SUPERSEDED_RULE)))
             .when(F.col(FATE) == F.lit(CONFLICT), F.array(F.lit(CONFLICT_RULE)))
             .otherwise(F.col(VIOLATIONS)))
    occurrence = F.row_number().over(Window.partitionBy("_source_file", "_raw").orderBy(F.lit(1)))
    with_id = df.select(*RAW_COLUMNS, rules.alias("rules")).withColumn("_occ", occurrence)
    record_id = F.sha2(F.concat_ws("\u0001", F.col("_source_file"), F.col("_raw"), F.col("_occ").cast("string")), 256)
    return with_id.select(
        record_id.alias("record_id"),
        F.col("_source_file").alias("source_file"),
        F.col("_raw").alias("raw"),
        F.col("rules"),
        F.lit(run_id).alias("run_id"),
    )
