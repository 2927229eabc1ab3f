"""Tiny models, clean tables and configs for the inference tests: no ingest, no Horovod.

A model is built with random weights from a hand-written spec and registered like training would;
a 'clean' table is a small Delta table with the flights key, shard, features and labels.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import types as T

from shardlake import delta_io, registry
from shardlake.config import AppConfig, load_config
from shardlake.lake import Lake
from shardlake.models.tabular import ModelSpec, build_model, save_model

REPO = Path(__file__).resolve().parent.parent
KEY = ["year", "month", "day", "carrier", "flight", "origin", "sched_dep_time"]
NUMERIC = ["distance", "sched_dep_hour"]
CATEGORICAL = ["carrier", "origin"]
CARRIERS = ["AA", "B6", "DL", "UA", "ZZ"]  # ZZ is not in the vocabulary: an unknown category
ORIGINS = ["EWR", "JFK", "LGA"]

CLEAN_SCHEMA = T.StructType([
    T.StructField("year", T.IntegerType()), T.StructField("month", T.IntegerType()),
    T.StructField("day", T.IntegerType()), T.StructField("carrier", T.StringType()),
    T.StructField("flight", T.IntegerType()), T.StructField("origin", T.StringType()),
    T.StructField("sched_dep_time", T.IntegerType()), T.StructField("distance", T.DoubleType()),
    T.StructField("sched_dep_hour", T.IntegerType()), T.StructField("delayed", T.IntegerType()),
    T.StructField("arr_delay", T.DoubleType()), T.StructField("shard", T.IntegerType()),
    T.StructField("_row_hash", T.LongType()),
])


def spec(kind: str = "binary") -> ModelSpec:
    """A small model spec with known feature statistics (what training would have fitted)."""
    return ModelSpec(kind=kind, numeric=NUMERIC, categorical=CATEGORICAL,
                     vocab={"carrier": ["AA", "B6", "DL", "UA"], "origin": ORIGINS},
                     mean={"distance": 1000.0, "sched_dep_hour": 13.0}, std={"distance": 600.0, "sched_dep_hour": 4.0},
                     hidden=[16, 8], embedding_dim=3, dropout=0.0)


def save(lake: Lake, dataset: str, name: str, kind: str = "binary", seed: int = 3) -> Path:
    """Build and save a model with random weights where training would put it; returns the folder."""
    folder = lake.model_dir(dataset, name)
    model = build_model(spec(kind), seed=seed)
    with torch.no_grad():  # a visible spread of scores, not a near-constant 0.5
        for parameter in model.parameters():
            parameter.mul_(3.0)
    save_model(model, folder)
    return folder


def register_model(spark: SparkSession, lake: Lake, dataset: str, name: str, kind: str = "binary",
                   test_metrics: dict | None = None, seed: int = 3, reference: dict | None = None) -> dict:
    """Save (unless saved already) and register a model like training does; returns its card."""
    folder = lake.model_dir(dataset, name)
    if not folder.exists():
        save(lake, dataset, name, kind, seed)
    model_spec = spec(kind)
    card = {"model_version": name, "dataset": dataset, "table_path": lake.table(dataset, "clean"),
            "table_version": 0, "metric_name": "auc" if kind == "binary" else "rmse", "validation_metric": 0.7,
            "model_dir": str(folder), "model_spec": model_spec.to_dict(),
            "test_metrics": test_metrics if test_metrics is not None else {}, "reference": reference or {}}
    (folder / "card.json").write_text(json.dumps(card))
    registry.register(spark, lake.registry(), card)
    return card


def rows(count: int, start: int = 0, seed: int = 0) -> pd.DataFrame:
    """``count`` flights with distinct keys (flight numbers from ``start``), features and both labels."""
    rng = np.random.default_rng(seed + start)
    flight = np.arange(start, start + count, dtype=np.int32)
    distance = rng.uniform(100, 2500, count)
    distance[::17] = np.nan  # missing values become the training mean inside the model
    frame = pd.DataFrame({
        "year": np.int32(2013), "month": (flight % 12 + 1).astype(np.int32), "day": (flight % 28 + 1).astype(np.int32),
        "carrier": [CARRIERS[i % len(CARRIERS)] for i in flight], "flight": flight,
        "origin": [ORIGINS[i % len(ORIGINS)] for i in flight],
        "sched_dep_time": rng.integers(500, 2300, count).astype(np.int32), "distance": distance,
        "sched_dep_hour": rng.integers(5, 23, count).astype(np.int32),
        "delayed": rng.integers(0, 2, count).astype(np.int32), "arr_delay": rng.normal(5, 30, count),
        "shard": (flight % 4).astype(np.int32),
    })
    return with_hash(frame)


def with_hash(data: pd.DataFrame) -> pd.DataFrame:
    """``data`` with ``_row_hash``, a content hash of its data columns, as the ingest gives each clean row
    (pandas' own hash here: inference only carries and compares it)."""
    columns = [c for c in data.columns if c not in ("shard", "_row_hash")]
    return data.assign(_row_hash=pd.util.hash_pandas_object(data[columns], index=False).astype(np.int64))


def update_clean(spark: SparkSession, lake: Lake, dataset: str, data: pd.DataFrame) -> int:
    """Replace the clean rows of ``data``'s keys in place (one MERGE, as a nightly ingest does); the new version."""
    from delta.tables import DeltaTable

    path = lake.table(dataset, "clean")
    condition = " AND ".join(f"t.`{k}` <=> s.`{k}`" for k in KEY)
    (DeltaTable.forPath(spark, path).alias("t").merge(frame(spark, data).alias("s"), condition)
     .whenMatchedUpdateAll().execute())
    return delta_io.latest_version(spark, path)


def frame(spark: SparkSession, data: pd.DataFrame) -> DataFrame:
    return spark.createDataFrame(data, CLEAN_SCHEMA)


def write_clean(spark: SparkSession, lake: Lake, dataset: str, data: pd.DataFrame, partitions: int = 2) -> int:
    """Append rows to the dataset's clean table (created on first use); returns the new version."""
    path = lake.table(dataset, "clean")
    frame(spark, data).repartition(partitions).write.format("delta").mode("append").save(path)
    return delta_io.latest_version(spark, path)


def config(lake: Lake, dataset: str, *overrides: str, kind: str = "binary") -> AppConfig:
    """The project's base configuration pointed at ``lake`` and a dataset named ``dataset``."""
    label = ["dataset.label.kind=regression", "dataset.label.column=arr_delay"] if kind == "regression" else []
    return load_config([REPO / "conf" / "base.yaml"],
                       [f"lake.root={lake.root}", f"dataset.name={dataset}", "infer.plot_sample_rows=500",
                        "infer.quantize_sample_rows=500", *label, *overrides])


def in_process_scores(folder: Path, data: pd.DataFrame) -> np.ndarray:
    """Reference scores: the saved model loaded here, every row in one batch, no Spark."""
    from shardlake.models.tabular import encode, load_model

    model = load_model(folder)
    numeric, categorical = encode(data, model.spec)
    with torch.inference_mode():
        return model.predict(torch.from_numpy(numeric), torch.from_numpy(categorical)).double().numpy()
