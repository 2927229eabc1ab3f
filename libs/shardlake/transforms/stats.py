"""Statistics fitted on the training split: fill values, standardisation, category vocabularies.

They are computed once per table version and travel with it (and with every model trained on it),
so training and inference apply exactly the same transform.
"""
from __future__ import annotations

import operator
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from functools import reduce

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T

from shardlake.transforms.clean import SPLIT

MEDIAN_ACCURACY = 10000


@dataclass(frozen=True)
class FeatureStats:
    """Per-feature statistics of one table version's training split.

    ``vocab`` holds each categorical column's values in the column's own type (int, bool, float;
    other types as their text), as JSON keeps them: the encoder looks values up as they come.
    """

    mean: dict[str, float] = field(default_factory=dict)
    std: dict[str, float] = field(default_factory=dict)
    vocab: dict[str, list] = field(default_factory=dict)
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


# Field of the (column, value) struct that carries a categorical column's value, by Spark type.
_INTEGRAL, _FRACTIONAL, _BOOLEAN, _TEXT = "integral", "fractional", "boolean", "text"
_FIELDS = (_INTEGRAL, _FRACTIONAL, _BOOLEAN, _TEXT)
_FIELD_TYPES = {_INTEGRAL: "long", _FRACTIONAL: "double", _BOOLEAN: "boolean", _TEXT: "string"}


def category_field(data_type: T.DataType) -> str:
    """Which typed field a categorical column's values travel in: its own type where the encoder
    receives values of that type (ints, floats, bools), else text (strings; other types as Spark's text)."""
    if isinstance(data_type, T.BooleanType):
        return _BOOLEAN
    if isinstance(data_type, T.IntegralType):
        return _INTEGRAL
    if isinstance(data_type, (T.FloatType, T.DoubleType)):
        return _FRACTIONAL
    return _TEXT


def _category_value(column: str, kind: str) -> Column:
    """A struct of the column's name and its value in the field of its kind (the other fields null).

    One struct type for every column lets one grouped count fit every vocabulary, and the value
    keeps its type: a text detour would store 1 as "1" and True as "true", which the encoder,
    seeing 1 and True, would never find. NaN is missing, as for numeric features.
    """
    value = F.col(column)
    if kind == _FRACTIONAL:
        value = F.when(~F.isnan(value), value)
    return F.struct(F.lit(column).alias("column"), F.lit(kind).alias("kind"), *[
        (value if k == kind else F.lit(None)).cast(_FIELD_TYPES[k]).alias(k) for k in _FIELDS])


def fit_vocabularies(train: DataFrame, categorical: Sequence[str], max_categories: int) -> dict[str, list]:
    """The most frequent values (at most ``max_categories``) of each categorical column, sorted, typed.

    One grouped count over (column, value) pairs for every vocabulary at once. Ties in frequency
    go to the smaller value (numerically for numbers: 9 before 10).
    """
    vocab: dict[str, list] = {c: [] for c in categorical}
    if not categorical:
        return vocab
    kinds = {c: category_field(train.schema[c].dataType) for c in categorical}
    pairs = (train.select(F.explode(F.array(*[_category_value(c, kinds[c]) for c in categorical])).alias("p"))
             .select("p.*"))
    present = reduce(operator.or_, [F.col(k).isNotNull() for k in _FIELDS])
    rank = F.row_number().over(Window.partitionBy("column").orderBy(F.col("count").desc(), *_FIELDS))
    top = (pairs.where(present).groupBy("column", "kind", *_FIELDS).count()
           .withColumn("_rank", rank).where(F.col("_rank") <= max_categories).collect())
    for r in top:
        vocab[r["column"]].append(r[r["kind"]])
    return {c: sorted(v) for c, v in vocab.items()}


def fit_feature_stats(train: DataFrame, numeric: Sequence[str], categorical: Sequence[str],
                      max_categories: int) -> FeatureStats:
    """Mean/std of numeric features and the most frequent categories (at most ``max_categories``).

    Two jobs whatever the number of features: one aggregation for the numbers, one grouped count
    for every vocabulary at once (``fit_vocabularies``).
    """
    aggs = [F.count(F.lit(1)).alias("rows")]
    aggs += [F.avg(F.col(c).cast("double")).alias(f"mean:{c}") for c in numeric]
    aggs += [F.stddev_pop(F.col(c).cast("double")).alias(f"std:{c}") for c in numeric]
    row = train.agg(*aggs).first().asDict()
    mean = {c: float(row[f"mean:{c}"] or 0.0) for c in numeric}
    std = {c: float(row[f"std:{c}"] or 0.0) or 1.0 for c in numeric}
    return FeatureStats(mean=mean, std=std, vocab=fit_vocabularies(train, categorical, max_categories),
                        rows=int(row["rows"]))
