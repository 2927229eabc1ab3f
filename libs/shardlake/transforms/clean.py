"""Cleaning rules, joins, duplicates, sharding and splits: pure DataFrame transforms."""
from __future__ import annotations

from collections.abc import Mapping, Sequence

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

from shardlake.transforms.parse import PARSE_ERRORS, RAW_COLUMNS

VIOLATIONS = "_violations"
SHARD = "shard"
SPLIT = "split"
ROW_HASH = "_row_hash"
SPLITS = ("train", "validation", "test")


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
) -> list[Column]:
    checks = [F.when(F.col(c).isNull(), F.lit(f"required:{c}")) for c in required]
    for column, (low, high) in ranges.items():
        bad = F.lit(False)
        if low is not None:
            bad = bad | (F.col(column) < F.lit(low))
        if high is not None:
            bad = bad | (F.col(column) > F.lit(high))
        checks.append(F.when(F.col(column).isNotNull() & bad, F.lit(f"range:{column}")))
    for column, values in allowed.items():
        checks.append(F.when(F.col(column).isNotNull() & ~F.col(column).isin(list(values)), F.lit(f"allowed:{column}")))
    for column, pattern in patterns.items():
        checks.append(F.when(F.col(column).isNotNull() & ~F.col(column).rlike(pattern), F.lit(f"pattern:{column}")))
    for column in finite:
        value = F.col(column).cast("double")
        checks.append(F.when(F.isnan(value) | value.isin(float("inf"), float("-inf")), F.lit(f"finite:{column}")))
    return checks


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
    checks = _rule_checks(required, ranges or {}, allowed or {}, patterns or {}, finite)
    rule_hits = F.array_compact(F.array(*checks)) if checks else F.array().cast("array<string>")
    parsed_ok = F.size(F.col(PARSE_ERRORS)) == 0
    violations = F.when(parsed_ok, rule_hits).otherwise(F.col(PARSE_ERRORS))
    return df.withColumn(VIOLATIONS, violations).drop(PARSE_ERRORS)


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


def drop_exact_duplicates(df: DataFrame) -> DataFrame:
    """Remove rows identical in every data column (raw text and source file are not data)."""
    data_columns = [c for c in df.columns if c not in RAW_COLUMNS]
    # Grouping by shard first lets Spark reuse the shard partitioning for the later key window.
    ordered = [SHARD, *[c for c in data_columns if c != SHARD]] if SHARD in data_columns else data_columns
    return df.dropDuplicates(ordered)


def rank_key_duplicates(df: DataFrame, key: Sequence[str], order_by: str | None) -> DataFrame:
    """Number rows within a key: 1 is kept (latest by ``order_by``), the others are superseded.

    Ties (and a missing ``order_by``) are broken by the raw record text so the choice is stable.
    """
    order = [F.col(order_by).desc_nulls_last()] if order_by else []
    partition = [SHARD, *key] if SHARD in df.columns else list(key)
    window = Window.partitionBy(*partition).orderBy(*order, F.col("_raw").desc())
    return df.withColumn("_key_rank", F.row_number().over(window))


def with_row_hash(df: DataFrame, columns: Sequence[str]) -> DataFrame:
    """Hash of a row's data columns, so a MERGE rewrites only rows whose content changed."""
    return df.withColumn(ROW_HASH, F.xxhash64(*[F.col(c) for c in columns]))


def fill_missing(df: DataFrame, values: Mapping[str, object]) -> DataFrame:
    """Fill nulls (and NaN) of the given columns with fixed values computed elsewhere."""
    if not values:
        return df
    filled = {}
    for column, value in values.items():
        current = F.col(column)
        missing = current.isNull()
        if isinstance(value, float):
            missing = missing | F.isnan(current)
        filled[column] = F.when(missing, F.lit(value).cast(df.schema[column].dataType)).otherwise(current)
    return df.withColumns(filled)


def quarantine_records(df: DataFrame, run_id: str, extra_rule: str | None = None) -> DataFrame:
    """Rows for the quarantine table: raw record, source, broken rules, a stable record id, the run."""
    rules = F.col(VIOLATIONS) if extra_rule is None else F.array(F.lit(extra_rule))
    occurrence = F.row_number().over(Window.partitionBy("_source_file", "_raw").orderBy(F.lit(1)))
    with_id = df.select(*RAW_COLUMNS, rules.alias("rules")).withColumn("_occ", occurrence)
    record_id = F.sha2(F.concat_ws("\u0001", F.col("_source_file"), F.col("_raw"), F.col("_occ").cast("string"),
                                   F.lit(extra_rule or "")), 256)
    return with_id.select(
        record_id.alias("record_id"),
        F.col("_source_file").alias("source_file"),
        F.col("_raw").alias("raw"),
        F.col("rules"),
        F.lit(run_id).alias("run_id"),
    )
