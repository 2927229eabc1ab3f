"""Model registry: a Delta table under the lake listing model versions, their cards and stages."""
from __future__ import annotations

import json
from collections.abc import Mapping

from delta.tables import DeltaTable
from pyspark.sql import SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from shardlake import delta_io

REGISTRY_SCHEMA = T.StructType([
    T.StructField("model_version", T.StringType(), False),
    T.StructField("dataset", T.StringType(), False),
    T.StructField("table_path", T.StringType()),
    T.StructField("table_version", T.LongType()),
    T.StructField("metric_name", T.StringType()),
    T.StructField("validation_metric", T.DoubleType()),
    T.StructField("stage", T.StringType()),
    T.StructField("model_dir", T.StringType()),
    T.StructField("card_json", T.StringType()),
])


class PromotionError(ValueError):
    """A model that may not become the production model (unknown, or below the threshold)."""


def register(spark: SparkSession, registry_path: str, card: Mapping) -> None:
    """Add or refresh a model version as a 'candidate' (a re-registration keeps its current stage).

    A MERGE by model version: idempotent, so a commit that lost to a concurrent writer (another
    DAG's registration or promotion) is retried on the new snapshot.
    """
    delta_io.retry_on_conflict(lambda: delta_io.ensure_table(spark, registry_path, REGISTRY_SCHEMA), registry_path)
    row = (card["model_version"], card["dataset"], card["table_path"], int(card["table_version"]),
           card["metric_name"], float(card["validation_metric"]), "candidate", card["model_dir"],
           json.dumps(card, sort_keys=True, default=str))
    source = spark.createDataFrame([row], REGISTRY_SCHEMA)
    delta_io.retry_on_conflict(lambda: (
        DeltaTable.forPath(spark, registry_path).alias("t")
        .merge(source.alias("s"), "t.model_version = s.model_version")
        .whenMatchedUpdate(set={c: f"s.{c}" for c in REGISTRY_SCHEMA.fieldNames() if c != "stage"})
        .whenNotMatchedInsertAll()
        .execute()), registry_path)


def promote(spark: SparkSession, registry_path: str, model_version: str, threshold: float,
            higher_is_better: bool = True) -> None:
    """Make ``model_version`` its dataset's production model if its validation metric meets ``threshold``.

    The check and the UPDATE are retried together when a concurrent writer wins the commit, so a
    retry judges the registry as it is then.
    """
    delta_io.retry_on_conflict(lambda: _promote(spark, registry_path, model_version, threshold, higher_is_better),
                               registry_path)


def _promote(spark: SparkSession, registry_path: str, model_version: str, threshold: float,
             higher_is_better: bool) -> None:
    row = (delta_io.read_version(spark, registry_path)
           .where(F.col("model_version") == model_version).first()) if delta_io.table_exists(spark, registry_path) else None
    if row is None:
        raise PromotionError(f"model {model_version!r} is not in the registry {registry_path}")
    value = row["validation_metric"]
    ok = value is not None and (value >= threshold if higher_is_better else value <= threshold)
    if not ok:
        raise PromotionError(f"model {model_version}: validation {row['metric_name']} {value} does not meet "
                             f"the promotion threshold {threshold}; it stays a candidate")
    table = DeltaTable.forPath(spark, registry_path)
    # One UPDATE commit demotes the old production model and promotes the new one atomically.
    table.update(
        condition=(F.col("dataset") == row["dataset"]) & ((F.col("stage") == "production") | (F.col("model_version") == model_version)),
        set={"stage": F.when(F.col("model_version") == model_version, F.lit("production")).otherwise(F.lit("archived"))},
    )


def production_model(spark: SparkSession, registry_path: str, dataset: str) -> Mapping | None:
    """Card of the dataset's production model, if any."""
    if not delta_io.table_exists(spark, registry_path):
        return None
    row = (delta_io.read_version(spark, registry_path)
           .where((F.col("dataset") == dataset) & (F.col("stage") == "production")).first())
    return json.loads(row["card_json"]) if row else None


def model_card(spark: SparkSession, registry_path: str, model_version: str) -> Mapping | None:
    """Card of one model version, if registered."""
    if not delta_io.table_exists(spark, registry_path):
        return None
    row = delta_io.read_version(spark, registry_path).where(F.col("model_version") == model_version).first()
    return json.loads(row["card_json"]) if row else None


def card_for(spark: SparkSession, registry_path: str, dataset: str, model_version: str | None) -> Mapping | None:
    """Card of ``model_version`` when one is named, else of the dataset's production model; None if absent."""
    if model_version:
        return model_card(spark, registry_path, model_version)
    return production_model(spark, registry_path, dataset)
