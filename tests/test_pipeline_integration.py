"""ingest -> train -> infer on a real sample of the flights data, through the jobs' entry points.

Real Spark, real delta-spark tables, real Petastorm and real Horovod (2 Gloo processes): no mocks.
"""
from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from deltalake import DeltaTable as RsDeltaTable
from pyspark.sql import functions as F

from jobs import infer as infer_job
from shardlake import delta_io, registry

pytestmark = pytest.mark.slow
KEY = ["year", "month", "day", "carrier", "flight", "origin", "sched_dep_time"]


@pytest.fixture(scope="module")
def pipeline(flights_pipeline_run):
    """The three jobs run once on a ~3.4k-row sample (conftest.py: shared with tests/test_ops_lineage.py)."""
    return flights_pipeline_run


def test_every_source_flight_is_clean_quarantined_or_a_duplicate(spark, pipeline):
    lake = pipeline["lake"]
    run = delta_io.read_version(spark, lake.table("flights", "ingest_runs")).where(F.col("run_id") == "it-1").first()
    clean = delta_io.read_version(spark, lake.table("flights", "clean")).count()
    quarantined = delta_io.read_version(spark, lake.table("flights", "quarantine")).count()
    cancelled = sum(1 for line in pipeline["rows"] if ",NA," in line.split(",", 9)[-1] or line.split(",")[8] == "NA")
    assert (run["rows_read"], clean + quarantined + run["duplicates_removed"]) == (len(pipeline["rows"]), len(pipeline["rows"]))
    assert quarantined == cancelled


def test_predictions_hold_one_row_per_clean_flight_with_versions(spark, pipeline):
    lake = pipeline["lake"]
    clean_path = lake.table("flights", "clean")
    clean = delta_io.read_version(spark, clean_path)
    predictions = delta_io.read_version(spark, lake.table("flights", "predictions"))
    card = registry.production_model(spark, lake.registry(), "flights")
    expected = clean.select(*KEY).withColumns({
        "model_version": F.lit(card["model_version"]),
        "source_version": F.lit(delta_io.latest_version(spark, clean_path)).cast("long"),
    })
    actual = predictions.select(*KEY, "model_version", "source_version")
    assert actual.count() == actual.distinct().count()
    assert sorted(actual.collect()) == sorted(expected.collect())


def test_scores_are_probabilities_and_predictions_their_threshold(spark, pipeline):
    predictions = delta_io.read_version(spark, pipeline["lake"].table("flights", "predictions"))
    bad = predictions.where((F.col("score") < 0) | (F.col("score") > 1) | F.col("score").isNull()
                            | (F.col("prediction") != (F.col("score") >= 0.5).cast("int")))
    assert bad.collect() == []


def test_model_card_records_table_version_config_and_metrics(spark, pipeline):
    lake = pipeline["lake"]
    card = registry.production_model(spark, lake.registry(), "flights")
    on_disk = json.loads((lake.model_dir("flights", card["model_version"]) / "card.json").read_text())
    assert on_disk["table_path"] == lake.table("flights", "clean")
    assert on_disk["table_version"] == delta_io.latest_version(spark, lake.table("flights", "clean"))
    assert on_disk["config"]["train"]["epochs"] == 2
    assert [h["epoch"] for h in on_disk["history"]] == [0, 1]
    assert set(on_disk["test_metrics"]) >= {"accuracy", "precision", "recall", "auc"}
    assert (lake.model_dir("flights", card["model_version"]) / "training_curve.png").stat().st_size > 0


def test_tables_open_in_an_independent_delta_reader(spark, pipeline):
    lake = pipeline["lake"]
    for name in ("clean", "quarantine", "predictions", "inference_summary"):
        path = lake.table("flights", name)
        table = RsDeltaTable(path)
        rows = sum(pq.ParquetFile(f).metadata.num_rows for f in table.file_uris())
        assert (table.version(), rows) == (delta_io.latest_version(spark, path), delta_io.read_version(spark, path).count())


def test_rerunning_inference_writes_nothing_twice(spark, pipeline):
    lake = pipeline["lake"]
    path = lake.table("flights", "predictions")
    before = delta_io.read_version(spark, path).drop("logical_date").collect()
    assert infer_job.main(["--logical-date", "2024-01-03", *pipeline["overrides"]]) == 0
    after = delta_io.read_version(spark, path).drop("logical_date").collect()
    assert sorted(after) == sorted(before)


def _job_figures(path) -> dict[str, float]:
    """A job's Prometheus textfile: {name: value} of its series labelled by job and dataset only, and the
    per-epoch loss as {epoch: value}."""
    from prometheus_client.parser import text_string_to_metric_families

    samples = [s for family in text_string_to_metric_families(path.read_text()) for s in family.samples]
    figures = {s.name: s.value for s in samples if set(s.labels) == {"job", "dataset"}}
    figures["loss"] = {int(s.labels["epoch"]): s.value for s in samples if s.name == "shardlake_train_epoch_loss"}
    return figures


def test_each_job_leaves_its_prometheus_textfile_with_its_own_figures(spark, pipeline):
    lake = pipeline["lake"]
    root = Path(lake.root)
    run = delta_io.read_version(spark, lake.table("flights", "ingest_runs")).where(F.col("run_id") == "it-1").first()
    card = registry.production_model(spark, lake.registry(), "flights")
    on_disk = json.loads((lake.model_dir("flights", card["model_version"]) / "card.json").read_text())
    infer_dir = next((root / "flights" / "inference_runs").glob("*/2024-01-02_v*"))
    ingest = _job_figures(root / "_runs" / "flights" / "ingest" / "it-1" / "metrics.prom")
    train = _job_figures(lake.model_dir("flights", card["model_version"]) / "metrics.prom")
    promote = _job_figures(root / "_runs" / "flights" / "promote" / card["model_version"] / "metrics.prom")
    infer = _job_figures(infer_dir / "metrics.prom")
    assert (ingest["shardlake_ingest_rows_read"], ingest["shardlake_ingest_rows_clean"]) == (
        run["rows_read"], run["clean_rows"])
    assert (train["shardlake_train_epochs_run"], train["loss"]) == (
        2, {h["epoch"]: h["train_loss"] for h in on_disk["history"]})
    assert promote["shardlake_promote_promoted"] == 1
    assert infer["shardlake_infer_rows_scored"] == json.loads((infer_dir / "report.json").read_text())[
        "rows_scored"] == delta_io.read_version(spark, lake.table("flights", "clean")).count()
