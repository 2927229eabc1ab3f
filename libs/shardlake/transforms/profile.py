"""Binned distributions of columns, for label-free drift: a training-split reference, then the rows scored now.

A numeric column is cut at interior edges (bin i holds values v with edges[i-1] <= v < edges[i];
below the first edge is bin 0, at or above the last is the last bin); a categorical column's bins
are its categories, then one bin for any other value. Missing values have bin -1. Counting every
column's bins is one pass: each row becomes one (column, bin) pair per column, and the pairs are
counted in one aggregation (small: columns x bins rows).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

MISSING = -1


def numeric_bin(value: Column, edges: Sequence[float]) -> Column:
    """The bin of a numeric value: how many interior edges are at or below it; MISSING for null or NaN."""
    index = sum((value >= F.lit(float(e))).cast("int") for e in edges) if edges else F.lit(0)
    return F.when(value.isNull() | F.isnan(value.cast("double")), F.lit(MISSING)).otherwise(index)


def category_bin(value: Column, categories: Sequence[str]) -> Column:
    """The bin of a categorical value: its position among ``categories``, len(categories) for any other value."""
    binned = F.when(value.isNull(), F.lit(MISSING))
    text = value.cast("string")
    for position, category in enumerate(categories):
        binned = binned.when(text == F.lit(category), F.lit(position))
    return binned.otherwise(F.lit(len(categories)))


def bin_counts(df: DataFrame, numeric: Mapping[str, Sequence[float]],
               categorical: Mapping[str, Sequence[str]]) -> DataFrame:
    """Rows per (column, bin) of ``df``: ``numeric`` maps a column to its interior edges, ``categorical`` to its
    categories."""
    pairs = [F.struct(F.lit(c).alias("column"), numeric_bin(F.col(c), e).alias("bin")) for c, e in numeric.items()]
    pairs += [F.struct(F.lit(c).alias("column"), category_bin(F.col(c), v).alias("bin"))
              for c, v in categorical.items()]
    if not pairs:
        return df.sparkSession.createDataFrame([], "column string, bin int, rows long")
    exploded = df.select(F.explode(F.array(*pairs)).alias("pair")).select("pair.column", "pair.bin")
    return exploded.groupBy("column", "bin").agg(F.count(F.lit(1)).alias("rows"))


def count_vectors(rows: Sequence[Mapping], sizes: Mapping[str, int]) -> dict[str, list[int]]:
    """Collected (column, bin, rows) as one list per column: index 0 the missing values, then bins 0..size-1."""
    vectors = {column: [0] * (size + 1) for column, size in sizes.items()}
    for row in rows:
        if row["column"] in vectors:
            vectors[row["column"]][int(row["bin"]) + 1] += int(row["rows"])
    return vectors
