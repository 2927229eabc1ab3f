"""The inference stage: map (score partitions) -> MERGE predictions -> reduce (per-shard summary).

Predictions are keyed by (key, model version); a re-run rewrites nothing and a failed run leaves
the table as it was, since each write is one Delta commit.
"""
from __future__ import annotations

import datetime as dt
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from shardlake import delta_io, registry
from shardlake.config import AppConfig
from shardlake.lake import Lake
from shardlake.scoring import PREDICTION, SCORE, TabularModel
from shardlake.transforms import summary as S
from shardlake.transforms.clean import SHARD


class InferenceError(RuntimeError):
    """Inference could not run: no model, no table, or bad input."""


@dataclass
class InferReport:
    model_version: str
    source_table: str
    source_version: int
    logical_date: str
    rows_scored: int = 0
    rows_inserted: int = 0
    rows_updated: int = 0
    predictions_version: int | None = None
    summary: list[dict] = field(default_factory=list)
    drift: dict = field(default_factory=dict)
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


SUMMARY_FIELDS = [
    ("scope", T.StringType()), ("rows", T.LongType()), ("mean_score", T.DoubleType()),
    ("predicted_positive_rate", T.DoubleType()), ("label_rate", T.DoubleType()), ("accuracy", T.DoubleType()),
    ("precision", T.DoubleType()), ("recall", T.DoubleType()), ("auc", T.DoubleType()),
]
SUMMARY_SCHEMA = T.StructType(
    [T.StructField("model_version", T.StringType(), False), T.StructField("source_version", T.LongType(), False),
     T.StructField("logical_date", T.DateType(), False)]
    + [T.StructField(n, t) for n, t in SUMMARY_FIELDS]
    + [T.StructField("drift_json", T.StringType())]
)


def resolve_card(spark: SparkSession, lake: Lake, dataset: str, model_version: str | None) -> dict:
    """The requested model's card, else the dataset's production model's."""
    registry_path = lake.registry()
    card = (registry.model_card(spark, registry_path, model_version) if model_version
            else registry.production_model(spark, registry_path, dataset))
    if card is None:
        wanted = f"model {model_version!r}" if model_version else f"a production model for {dataset!r}"
        raise InferenceError(f"{registry_path}: no {wanted}; train (and promote) one first, or pass infer.model_version")
    return dict(card)


def score(model: TabularModel, source: DataFrame, key: list[str], label: str | None, batch_size: int) -> DataFrame:
    """The map stage: the model's transform over the source, keeping key, shard and label."""
    passthrough = [*key, SHARD, *([label] if label else [])]
    return model.transform(source, passthrough, batch_size)


def _write_summary(spark: SparkSession, path: str, report: InferReport) -> None:
    rows = [(report.model_version, report.source_version, dt.date.fromisoformat(report.logical_date),
             *[r.get(n) for n, _ in SUMMARY_FIELDS], json.dumps(report.drift) if r["scope"] == "overall" else None)
            for r in report.summary]
    frame = spark.createDataFrame(rows, SUMMARY_SCHEMA)
    delta_io.ensure_table(spark, path, SUMMARY_SCHEMA)
    delta_io.merge_by_key(spark, path, frame, ["model_version", "source_version", "logical_date", "scope"])


def run_infer(spark: SparkSession, lake: Lake, config: AppConfig, logical_date: str,
              model_version: str | None = None, table_version: int | None = None,
              progress: Callable[[str], None] = lambda _m: None) -> InferReport:
    """Score one exact version of the clean table, MERGE predictions, write and return the summary."""
    started = time.monotonic()
    dataset = config.dataset
    card = resolve_card(spark, lake, dataset.name, model_version or config.infer.model_version)
    table_path = lake.table(dataset.name, "clean")
    if not delta_io.table_exists(spark, table_path):
        raise InferenceError(f"{table_path}: no clean table to score; run the ingest first")
    version = table_version if table_version is not None else delta_io.latest_version(spark, table_path)
    report = InferReport(card["model_version"], table_path, version, logical_date)
    model = TabularModel.load(Path(card["model_dir"]), card["model_version"])
    source = delta_io.read_version(spark, table_path, version)
    label = dataset.label.column if dataset.label.column in source.columns else None
    progress(f"scoring {table_path}@v{version} with {report.model_version}")
    scored = score(model, source, list(dataset.key), label, config.infer.batch_size)
    predictions = S.with_lineage(scored, report.model_version, table_path, version, logical_date)
    path = lake.table(dataset.name, "predictions")
    delta_io.ensure_table(spark, path, predictions.schema, partition_by=["model_version"])
    report.predictions_version = delta_io.merge_by_key(
        spark, path, predictions, [*dataset.key, "model_version"], prune_on=(),
        changed_when=f"t.{SCORE} <> s.{SCORE} OR t.{PREDICTION} <> s.{PREDICTION} OR t.source_version <> s.source_version")
    metrics = delta_io.commit_metrics(spark, path, report.predictions_version)
    report.rows_scored = int(metrics.get("numSourceRows", 0))
    report.rows_inserted = int(metrics.get("numTargetRowsInserted", 0))
    report.rows_updated = int(metrics.get("numTargetRowsUpdated", 0))

    progress("reducing: per-shard summary")
    written = (delta_io.read_version(spark, path, report.predictions_version)
               .where((F.col("model_version") == report.model_version) & (F.col("source_version") == version)))
    histograms = [r.asDict() for r in S.shard_histograms(written, label).collect()]
    report.summary = S.summarize(histograms, labelled=label is not None)
    overall = next(r for r in report.summary if r["scope"] == "overall") if report.summary else {}
    report.drift = S.drift(overall, card.get("test_metrics", {}), config.infer.drift_tolerance)
    _write_summary(spark, lake.table(dataset.name, "inference_summary"), report)
    report.seconds = round(time.monotonic() - started, 2)
    return report

