"""Binned distributions for label-free drift: every column's bins counted in one pass, against numpy."""
from __future__ import annotations

import numpy as np

from shardlake.transforms import profile as P


def test_numeric_and_categorical_bins_are_counted_as_numpy_and_python_count_them(spark):
    rng = np.random.default_rng(4)
    x = rng.normal(0, 1, 500)
    x[::50] = np.nan
    c = rng.choice(["a", "b", "z", None], 500)
    frame = spark.createDataFrame([(float(a), b) for a, b in zip(x, c)], "x double, c string")
    edges, categories = [-1.0, 0.0, 1.0], ["a", "b"]

    counted = P.count_vectors(P.bin_counts(frame, {"x": edges}, {"c": categories}).collect(), {"x": 4, "c": 3})

    finite = x[~np.isnan(x)]
    expected_x = [int(np.isnan(x).sum()), *np.bincount(np.searchsorted(edges, finite, side="right"), minlength=4)]
    expected_c = [int(sum(v is None for v in c)), int(sum(v == "a" for v in c)), int(sum(v == "b" for v in c)),
                  int(sum(v == "z" for v in c))]
    assert counted == {"x": expected_x, "c": expected_c}
