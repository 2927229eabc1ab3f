"""ingest -> train (2 Horovod ranks) -> promote -> infer with the source and the lake on a GCS server.

Issue 13: the same jobs on ``gs://`` (fake-gcs-server, started by the tests). The ingest runs as
``python -m jobs.ingest`` in a process of its own, so its session is built from the configuration
alone (the GCS connector's jar and settings); training and inference run in this process's session.
Spark writes through Hadoop's GCS connector, delta-rs lists a version's files, Petastorm reads them
through pyarrow's GCS client, the model and run files are written through the platform's store; then
everything is read back past the platform, with delta-rs and pyarrow straight from the server.
"""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys

import pytest

from flights_sample import write_sample
from lake_readback import KEY, keys, production_card
from jobs import infer as infer_job
from jobs import train as train_job

pytestmark = pytest.mark.slow
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def pipeline(gcs_server, spark, tmp_path_factory):
    """The three jobs once on a ~840-row sample uploaded to the server, the lake beside it."""
    sample, rows = write_sample(tmp_path_factory.mktemp("gcs-pipeline"), every=400)
    bucket = gcs_server.bucket("pipeline")
    gcs_server.write_object(f"{bucket}/landing/flights_sample.csv", sample.read_bytes())
    lake = f"gs://{bucket}/lake"
    overrides = [f"lake.root={lake}", f"dataset.source.path=gs://{bucket}/landing/*.csv", "dataset.shards=2",
                 *gcs_server.overrides(), "train.epochs=2", "train.batch_size=128", "train.num_proc=2",
                 "train.promote_threshold=0.0"]
    env = {k: v for k, v in os.environ.items() if k != "STORAGE_EMULATOR_HOST"}
    ingest = subprocess.run([sys.executable, "-m", "jobs.ingest", "--run-id", "gcs-it-1",
                             *overrides], cwd=REPO, env=env, capture_output=True, text=True)
    assert ingest.returncode == 0, ingest.stderr[-3000:]
    gcs_server.point(spark)  # this process's session started before the server
    assert train_job.main(["--promote", *overrides]) == 0
    assert infer_job.main(["--logical-date", "2024-01-02", *overrides]) == 0
    return {"server": gcs_server, "lake": lake, "bucket": bucket, "rows": rows, "ingest": ingest}


def _read(pipeline, table: str, columns: list[str] | None = None):
    return pipeline["server"].read_delta(f"{pipeline['lake']}/{table}", columns)



def _card(pipeline) -> dict:
    return production_card(lambda table, columns: _read(pipeline, table, columns), pipeline["server"].read_object)


def test_every_sampled_flight_is_clean_or_quarantined_in_the_tables_on_gcs(pipeline):
    counted = sum(_read(pipeline, f"flights/{name}").num_rows for name in ("clean", "quarantine"))
    runs = _read(pipeline, "flights/ingest_runs", ["run_id", "rows_read"]).to_pylist()
    assert (runs, counted) == ([{"run_id": "gcs-it-1", "rows_read": len(pipeline["rows"])}], len(pipeline["rows"]))


def test_the_ingest_job_on_gcs_prints_no_traceback(pipeline):
    assert "Traceback" not in pipeline["ingest"].stdout + pipeline["ingest"].stderr


def test_predictions_on_gcs_hold_one_row_per_clean_flight(pipeline):
    assert keys(_read(pipeline, "flights/predictions", KEY)) == keys(_read(pipeline, "flights/clean", KEY))


def test_the_production_model_on_gcs_is_the_one_its_card_registered(pipeline):
    card = _card(pipeline)
    clean = f"{pipeline['lake']}/flights/clean"
    assert (card["table_path"], card["table_version"]) == (clean, pipeline["server"].delta_table(clean).version())
    weights = pipeline["server"].read_object(f"{card['model_dir']}/model.safetensors")
    assert hashlib.sha256(weights).hexdigest() == card["weights_sha256"]


def test_the_training_curve_on_gcs_is_a_png(pipeline):
    curve = pipeline["server"].read_object(f"{_card(pipeline)['model_dir']}/training_curve.png")
    assert curve[:8] == b"\x89PNG\r\n\x1a\n"


def test_training_read_every_training_row_from_gcs_once_per_epoch(pipeline):
    splits = _read(pipeline, "flights/clean", ["split"]).column("split").to_pylist()
    assert [h["rows"] for h in _card(pipeline)["history"]] == [splits.count("train")] * 2


def test_nothing_of_the_run_is_left_in_the_ingests_staging_area(pipeline):
    assert pipeline["server"].object_keys(f"{pipeline['bucket']}/lake/_staging/ingest") == []
