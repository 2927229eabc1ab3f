"""Model registry: a Delta table under the lake listing model versions, their cards and stages.

A model version is a ``candidate`` when registered, ``production`` once a gate (``stages.gate``)
found it at least as good as the model it replaces, and ``archived`` when replaced. The gate's
figures (both models' metric on the same held-out rows) are kept on the candidate's row.
"""
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
    # The last gate's figures: the candidate's and the champion's metric on the same test rows.
    T.StructField("gate_table_version", T.LongType()),
    T.StructField("gate_metric", T.DoubleType()),
    T.StructField("champion_version", T.StringType()),
    T.StructField("champion_metric", T.DoubleType()),
    T.StructField("gate_decision", T.StringType()),
])
GATE_COLUMNS = ("gate_table_version", "gate_metric", "champion_version", "champion_metric", "gate_decision")


class PromotionError(ValueError):
    """A model that may not become the production model (unknown, or below the threshold)."""


def register(spark: SparkSession, registry_path: str, card: Mapping) -> None:
    """Add or refresh a model version as a 'candidate' (a re-registration keeps its current stage).

    A MERGE by model version: idempotent, so a commit that lost to a concurrent writer (another
    DAG's registration or promotion) is retried on the new snapshot.
    """
    delta_io.retry_on_conflict(lambda: delta_io.ensure_table(spark, registry_path, REGISTRY_SCHEMA,
                                                             allow_evolution=True), registry_path)
    row = (card["model_version"], card["dataset"], card["table_path"], int(card["table_version"]),
           card["metric_name"], float(card["validation_metric"]), "candidate", card["model_dir"],
           json.dumps(card, sort_keys=True, default=str), *[None] * len(GATE_COLUMNS))
    source = spark.createDataFrame([row], REGISTRY_SCHEMA)
    delta_io.retry_on_conflict(lambda: (
        DeltaTable.forPath(spark, registry_path).alias("t")
        .merge(source.alias("s"), "t.model_version = s.model_version")
        .whenMatchedUpdate(set={c: f"s.{c}" for c in REGISTRY_SCHEMA.fieldNames() if c not in ("stage", *GATE_COLUMNS)})
        .whenNotMatchedInsertAll()
        .execute()), registry_path)


def promote(spark: SparkSession, registry_path: str, model_version: str, gate: Mapping[str, object] | None = None,
            champion: str | None = None) -> None:
    """Make ``model_version`` its dataset's production model, archiving the one it replaces, in one commit.

    ``gate`` (the gate's figures, GATE_COLUMNS) is recorded on the row in the same commit, and
    ``champion`` is the production model the gate compared against: if another model became
    production meanwhile, the comparison no longer holds and this is refused. Retried on the
    new snapshot when a concurrent writer wins the commit, re-checking each time.
    """
    delta_io.retry_on_conflict(lambda: _apply_gate(spark, registry_path, model_version, gate, champion, True),
                               registry_path)


def record_refusal(spark: SparkSession, registry_path: str, model_version: str, gate: Mapping[str, object]) -> None:
    """Record a gate's figures on a candidate that stays a candidate (one UPDATE of its row)."""
    delta_io.retry_on_conflict(lambda: _apply_gate(spark, registry_path, model_version, gate, None, False),
                               registry_path)


def _find(spark: SparkSession, registry_path: str, model_version: str):
    """``model_version``'s registry row, or None (no registry yet, or not registered)."""
    if not delta_io.table_exists(spark, registry_path):
        return None
    return delta_io.read_version(spark, registry_path).where(F.col("model_version") == model_version).first()


def _row(spark: SparkSession, registry_path: str, model_version: str):
    row = _find(spark, registry_path, model_version)
    if row is None:
        raise PromotionError(f"model {model_version!r} is not in the registry {registry_path}")
    return row


def _apply_gate(spark: SparkSession, registry_path: str, model_version: str, gate: Mapping[str, object] | None,
                champion: str | None, promoted: bool) -> None:
    row = _row(spark, registry_path, model_version)
    figures = {c: F.lit((gate or {}).get(c)).cast(REGISTRY_SCHEMA[c].dataType) for c in GATE_COLUMNS}
    mine = F.col("model_version") == model_version
    table = DeltaTable.forPath(spark, registry_path)
    if not promoted:
        table.update(condition=mine, set=figures)
        return
    current = production_model(spark, registry_path, row["dataset"])
    current_version = current["model_version"] if current else None
    if gate is not None and current_version not in (champion, model_version):
        raise PromotionError(f"model {model_version}: the production model became {current_version} while the gate "
                             f"compared against {champion}; run the gate again")
    # One UPDATE commit demotes the old production model and promotes the new one atomically.
    keep = {c: F.when(mine, value).otherwise(F.col(c)) for c, value in figures.items()} if gate is not None else {}
    table.update(
        condition=(F.col("dataset") == row["dataset"]) & ((F.col("stage") == "production") | mine),
        set={"stage": F.when(mine, F.lit("production")).otherwise(F.lit("archived")), **keep},
    )


def gate_record(spark: SparkSession, registry_path: str, model_version: str) -> dict | None:
    """The gate figures recorded on ``model_version``'s row (GATE_COLUMNS), or None if no gate decided on it."""
    row = _find(spark, registry_path, model_version)
    return {c: row[c] for c in GATE_COLUMNS} if row is not None and row["gate_decision"] is not None else None


def production_model(spark: SparkSession, registry_path: str, dataset: str) -> Mapping | None:
    """Card of the dataset's production model, if any."""
    if not delta_io.table_exists(spark, registry_path):
        return None
    row = (delta_io.read_version(spark, registry_path)
           .where((F.col("dataset") == dataset) & (F.col("stage") == "production")).first())
    return json.loads(row["card_json"]) if row else None


def model_card(spark: SparkSession, registry_path: str, model_version: str) -> Mapping | None:
    """Card of one model version, if registered."""
    row = _find(spark, registry_path, model_version)
    return json.loads(row["card_json"]) if row else None


def card_for(spark: SparkSession, registry_path: str, dataset: str, model_version: str | None) -> Mapping | None:
    """Card of ``model_version`` when one is named, else of the dataset's production model; None if absent."""
    if model_version:
        return model_card(spark, registry_path, model_version)
    return production_model(spark, registry_path, dataset)


def latest_trained(spark: SparkSession, registry_path: str, dataset: str, config_hash: str,
                   code_version: str) -> str | None:
    """The model version registered for this configuration and code on the newest table version, if any.

    What a gate run right after training means by "the model just trained", without recomputing
    a name from the table's latest version (an ingest in between would change that).
    """
    if not delta_io.table_exists(spark, registry_path):
        return None
    card = F.col("card_json")
    row = (delta_io.read_version(spark, registry_path)
           .where((F.col("dataset") == dataset) & (F.get_json_object(card, "$.config_hash") == config_hash)
                  & (F.get_json_object(card, "$.code_version") == code_version))
           .orderBy(F.col("table_version").desc(), F.col("model_version").desc()).select("model_version").first())
    return row["model_version"] if row else None
