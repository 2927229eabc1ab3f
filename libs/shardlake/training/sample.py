"""Small clean-table-like inputs for training tests and benchmarks, without running the ingest.

``flights_like_frame`` makes rows with the flights dataset's feature and label columns and a
learnable signal; ``write_clean_table`` writes them as a Delta table laid out like the ingest's
clean table (partitioned by split, one file per shard and split). ``spec_from_files`` fits a
model spec on Parquet files with pyarrow alone (benchmarks need no Spark for it).
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

CARRIERS = ["9E", "AA", "B6", "DL", "EV", "MQ", "UA", "US", "WN"]
ORIGINS = ["EWR", "JFK", "LGA"]
DESTS = ["ATL", "BOS", "CLT", "DEN", "DFW", "LAX", "MCO", "MIA", "ORD", "SFO"]


def flights_like_frame(rows: int, seed: int = 0, splits: tuple[int, int, int] = (80, 10, 10),
                       shards: int = 4) -> pd.DataFrame:
    """Rows with the flights features, ``arr_delay`` (regression) and ``delayed`` (binary) labels.

    Late departures, rain and some carriers add delay, so a model can learn something. ``row_id``
    is unique (0..rows-1), for checks that every row was delivered once.
    """
    rng = np.random.default_rng(seed)
    hour = rng.integers(5, 23, rows)
    precip = np.where(rng.random(rows) < 0.1, rng.exponential(0.1, rows), 0.0)
    carrier = rng.choice(CARRIERS, rows)
    late_carrier = np.isin(carrier, ["EV", "MQ", "9E"])
    arr_delay = (-8 + 2.5 * np.maximum(hour - 12, 0) + 120 * precip + 12 * late_carrier
                 + rng.normal(0, 12, rows)).round()
    split = rng.choice(["train", "validation", "test"], rows, p=np.array(splits) / 100)
    return pd.DataFrame({
        "row_id": np.arange(rows, dtype=np.int64),
        "sched_dep_hour": hour.astype(np.int32),
        "distance": rng.uniform(100, 2500, rows).round(),
        "month": rng.integers(1, 13, rows).astype(np.int32),
        "day_of_week": rng.integers(1, 8, rows).astype(np.int32),
        "temp": rng.normal(55, 17, rows).round(1),
        "humid": rng.uniform(20, 100, rows).round(1),
        "wind_speed": rng.gamma(2.0, 5.0, rows).round(1),
        "precip": precip.round(2),
        "visib": np.clip(10 - 40 * precip + rng.normal(0, 0.5, rows), 0, 10).round(1),
        "seats": rng.choice([20, 55, 140, 180, 200, 375], rows).astype(np.int32),
        "engines": rng.choice([1, 2, 2, 2, 3], rows).astype(np.int32),
        "carrier": carrier,
        "origin": rng.choice(ORIGINS, rows),
        "dest": rng.choice(DESTS, rows),
        "arr_delay": arr_delay,
        "delayed": (arr_delay > 15).astype(np.int32),
        "shard": (np.arange(rows) % shards).astype(np.int32),
        "split": split,
    })


def write_clean_table(spark, path: str, frame: pd.DataFrame, mode: str = "overwrite") -> int:
    """Write ``frame`` as a Delta table partitioned by split, one file per (split, shard); returns the version."""
    from shardlake import delta_io

    df = spark.createDataFrame(frame)
    shards = int(frame["shard"].max()) + 1
    # One Spark partition per shard value (a hash or range partitioner may merge two of them).
    by_shard = df.rdd.keyBy(lambda row: row["shard"]).partitionBy(shards, lambda shard: shard).values()
    spark.createDataFrame(by_shard, df.schema).write.format("delta").mode(mode).partitionBy("split").save(path)
    return delta_io.latest_version(spark, path)


def spec_from_files(files: Sequence[str], numeric: Sequence[str], categorical: Sequence[str], kind: str,
                    label: str, max_categories: int = 200, **model) -> "ModelSpec":  # noqa: F821
    """A ModelSpec fitted on Parquet files with pyarrow (means, stds, vocabularies, label scale)."""
    import pyarrow.parquet as pq

    from shardlake.models.tabular import ModelSpec

    frame = pd.concat([pq.read_table(f.removeprefix("file://"), columns=[*numeric, *categorical, label]).to_pandas()
                       for f in files], ignore_index=True)
    # Values in their own type, as fit_feature_stats keeps them (the encoder looks them up as they come).
    vocab = {c: frame[c].value_counts().index[:max_categories].tolist() for c in categorical}
    target = frame[label].astype(float)
    scale = {"target_mean": float(target.mean()), "target_std": float(target.std() or 1.0)} if kind == "regression" else {}
    return ModelSpec(kind=kind, numeric=list(numeric), categorical=list(categorical), vocab=vocab,
                     mean={c: float(frame[c].mean()) for c in numeric},
                     std={c: float(frame[c].std() or 1.0) for c in numeric}, **scale, **model)
