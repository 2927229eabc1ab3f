"""Statistics fitted on the training split: fill values, standardisation, category vocabularies.

They are computed once per table version and travel with it (and with every model trained on it),
so training and inference apply exactly the same transform.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from shardlake.transforms.clean import SPLIT


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


def training_rows(df: DataFrame) -> DataFrame:
    return df.where(F.col(SPLIT) == F.lit("train"))


def fit_fill_values(train: DataFrame, strategies: Mapping[str, tuple[str, object]]) -> dict[str, object]:
    """Fill value per column: a constant, or the mean/median of the training rows."""
    values: dict[str, object] = {c: v for c, (s, v) in strategies.items() if s == "constant"}
    means = [c for c, (s, _) in strategies.items() if s == "mean"]
    medians = [c for c, (s, _) in strategies.items() if s == "median"]
    aggs = [F.avg(F.col(c)).alias(f"mean:{c}") for c in means]
    aggs += [F.percentile_approx(F.col(c), 0.5, 10000).alias(f"median:{c}") for c in medians]
    if aggs:
        row = train.agg(*aggs).first().asDict()
        for name, value in row.items():
            column = name.split(":", 1)[1]
            values[column] = float(value) if value is not None else 0.0
    return values


def fit_feature_stats(train: DataFrame, numeric: Sequence[str], categorical: Sequence[str],
                      max_categories: int) -> FeatureStats:
    """Mean/std of numeric features and the most frequent categories (at most ``max_categories``)."""
    aggs = [F.count(F.lit(1)).alias("rows")]
    aggs += [F.avg(F.col(c).cast("double")).alias(f"mean:{c}") for c in numeric]
    aggs += [F.stddev_pop(F.col(c).cast("double")).alias(f"std:{c}") for c in numeric]
    row = train.agg(*aggs).first().asDict()
    mean = {c: float(row[f"mean:{c}"] or 0.0) for c in numeric}
    std = {c: float(row[f"std:{c}"] or 0.0) or 1.0 for c in numeric}
    vocab = {}
    for column in categorical:
        top = (train.where(F.col(column).isNotNull()).groupBy(column).count()
               .orderBy(F.col("count").desc(), F.col(column).asc()).limit(max_categories).collect())
        vocab[column] = sorted(str(r[column]) for r in top)
    return FeatureStats(mean=mean, std=std, vocab=vocab, rows=int(row["rows"]))
