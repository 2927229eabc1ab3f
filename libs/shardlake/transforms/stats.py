"""Statistics fitted on the training split: fill values, standardisation, category vocabularies.

They are computed once per table version and travel with it (and with every model trained on it),
so training and inference apply exactly the same transform.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

from shardlake.transforms.clean import SPLIT

MEDIAN_ACCURACY = 10000


@dataclass(frozen=True)
class FeatureStats:
    """Per-feature statistics of one table version's training split."""

    mean: dict[str, float] = field(default_factory=dict)
    std: dict[str, float] = field(default_factory=dict)
    vocab: dict[str, list[str]] = field(default_factory=dict)
    rows: int = 0

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping) -> "FeatureStats":
        return cls(mean=dict(data["mean"]), std=dict(data["std"]),
                   vocab={k: list(v) for k, v in data["vocab"].items()}, rows=int(data["rows"]))


def is_training(column: str = SPLIT) -> Column:
    """True for rows of the training split."""
    return F.col(column) == F.lit("train")


def training_rows(df: DataFrame) -> DataFrame:
    """Rows of the training split: the only rows statistics are fitted on (no leakage)."""
    return df.where(is_training())


def fill_aggregates(strategies: Mapping[str, tuple[str, object]], where: Column | None = None) -> list[Column]:
    """Aggregate expressions for the mean/median fill values, restricted to rows where ``where`` holds.

    NaN is treated as missing (it would make a mean NaN). Meant to run inside a larger
    aggregation, so that fill values cost no pass of their own.
    """
    aggs = []
    for column, (strategy, _) in strategies.items():
        value = F.col(column)
        usable = value.isNotNull() & ~F.isnan(value.cast("double"))
        if where is not None:
            usable = usable & where
        picked = F.when(usable, value.cast("double"))
        if strategy == "mean":
            aggs.append(F.avg(picked).alias(f"fill:{column}"))
        elif strategy == "median":
            aggs.append(F.percentile_approx(picked, 0.5, MEDIAN_ACCURACY).alias(f"fill:{column}"))
    return aggs


def fill_values_from(row: Mapping[str, object], strategies: Mapping[str, tuple[str, object]]) -> dict[str, object]:
    """Fill value per column from an aggregation row of ``fill_aggregates`` (constants as declared).

    A statistic of a column with no usable training value falls back to 0.0, so the fill is total.
    Statistics are rounded to 9 decimals: Spark sums partial aggregates in whatever order tasks
    finish, so the last bits of a mean differ between identical runs, and filled rows would then
    differ too (a re-run must leave the table content identical).
    """
    values: dict[str, object] = {}
    for column, (strategy, constant) in strategies.items():
        if strategy == "constant":
            values[column] = constant
        else:
            found = row.get(f"fill:{column}")
            values[column] = round(float(found), 9) if found is not None else 0.0
    return values


def fit_fill_values(train: DataFrame, strategies: Mapping[str, tuple[str, object]]) -> dict[str, object]:
    """Fill value per column: a constant, or the mean/median of the given (training) rows."""
    aggs = fill_aggregates(strategies)
    row = train.agg(*aggs).first().asDict() if aggs else {}
    return fill_values_from(row, strategies)


def fit_feature_stats(train: DataFrame, numeric: Sequence[str], categorical: Sequence[str],
                      max_categories: int) -> FeatureStats:
    """Mean/std of numeric features and the most frequent categories (at most ``max_categories``).

    Two jobs whatever the number of features: one aggregation for the numbers, one grouped count
    over (column, value) pairs for every vocabulary at once. Ties in frequency go to the smaller value.
    """
    aggs = [F.count(F.lit(1)).alias("rows")]
    aggs += [F.avg(F.col(c).cast("double")).alias(f"mean:{c}") for c in numeric]
    aggs += [F.stddev_pop(F.col(c).cast("double")).alias(f"std:{c}") for c in numeric]
    row = train.agg(*aggs).first().asDict()
    mean = {c: float(row[f"mean:{c}"] or 0.0) for c in numeric}
    std = {c: float(row[f"std:{c}"] or 0.0) or 1.0 for c in numeric}
    vocab: dict[str, list[str]] = {c: [] for c in categorical}
    if categorical:
        pairs = train.select(F.explode(F.array(*[
            F.struct(F.lit(c).alias("column"), F.col(c).cast("string").alias("value")) for c in categorical
        ])).alias("p")).select("p.column", "p.value").where(F.col("value").isNotNull())
        rank = F.row_number().over(Window.partitionBy("column").orderBy(F.col("count").desc(), F.col("value").asc()))
        top = (pairs.groupBy("column", "value").count().withColumn("_rank", rank)
               .where(F.col("_rank") <= max_categories).select("column", "value").collect())
        for r in top:
            vocab[r["column"]].append(r["value"])
        vocab = {c: sorted(v) for c, v in vocab.items()}
    return FeatureStats(mean=mean, std=std, vocab=vocab, rows=int(row["rows"]))
