"""ingest -> train (2 Horovod ranks) -> promote -> infer with the source and the lake on a real HDFS.

Issue 13: the same jobs on ``hdfs://`` (Hadoop's MiniDFSCluster, started by the tests): Spark writes
through its own Hadoop client, delta-rs lists a version's files, Petastorm reads them and the model
and run files are written through the platform's HDFS store; then everything is read back past the
platform, with delta-rs and hdfs-native's client.
"""
from __future__ import annotations

import hashlib

import pyarrow.parquet as pq
import pytest
from deltalake import DeltaTable
from hdfs_native.fsspec import HdfsFileSystem

from flights_sample import write_sample
from lake_readback import KEY, keys, production_card
from jobs import infer as infer_job
from jobs import ingest as ingest_job
from jobs import train as train_job

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def pipeline(hdfs_server, tmp_path_factory):
    """The three jobs once on a ~840-row sample copied into HDFS, the lake beside it."""
    sample, rows = write_sample(tmp_path_factory.mktemp("hdfs-pipeline"), every=400)
    root = hdfs_server.folder("pipeline")
    fs = HdfsFileSystem(host="127.0.0.1", port=hdfs_server.port)
    with fs.open(f"{root.removeprefix(hdfs_server.url)}/landing/flights_sample.csv", "wb") as out:
        out.write(sample.read_bytes())
    overrides = [f"lake.root={root}/lake", f"dataset.source.path={root}/landing/*.csv", "dataset.shards=2",
                 "train.epochs=2", "train.batch_size=128", "train.num_proc=2", "train.promote_threshold=0.0"]
    assert ingest_job.main(["--run-id", "hdfs-it-1", *overrides]) == 0
    assert train_job.main(["--promote", *overrides]) == 0
    assert infer_job.main(["--logical-date", "2024-01-02", *overrides]) == 0
    return {"lake": f"{root}/lake", "rows": rows, "fs": fs, "url": hdfs_server.url}


def _read(pipeline, table: str, columns: list[str] | None = None):
    """A table's current files as delta-rs lists them, read by pyarrow through hdfs-native."""
    files = DeltaTable(f"{pipeline['lake']}/{table}").file_uris()
    return pq.read_table([f.removeprefix(pipeline["url"]) for f in files], filesystem=pipeline["fs"], columns=columns)


def _object(pipeline, url: str) -> bytes:
    with pipeline["fs"].open(url.removeprefix(pipeline["url"]), "rb") as stored:
        return stored.read()



def _card(pipeline) -> dict:
    return production_card(lambda table, columns: _read(pipeline, table, columns), lambda url: _object(pipeline, url))


def test_every_sampled_flight_is_clean_or_quarantined_in_the_tables_on_hdfs(pipeline):
    counted = sum(_read(pipeline, f"flights/{name}").num_rows for name in ("clean", "quarantine"))
    runs = _read(pipeline, "flights/ingest_runs", ["run_id", "rows_read"]).to_pylist()
    assert (runs, counted) == ([{"run_id": "hdfs-it-1", "rows_read": len(pipeline["rows"])}], len(pipeline["rows"]))


def test_predictions_on_hdfs_hold_one_row_per_clean_flight(pipeline):
    assert keys(_read(pipeline, "flights/predictions", KEY)) == keys(_read(pipeline, "flights/clean", KEY))


def test_the_production_model_on_hdfs_is_the_one_its_card_registered(pipeline):
    card = _card(pipeline)
    clean = f"{pipeline['lake']}/flights/clean"
    assert (card["table_path"], card["table_version"]) == (clean, DeltaTable(clean).version())
    weights = _object(pipeline, f"{card['model_dir']}/model.safetensors")
    assert hashlib.sha256(weights).hexdigest() == card["weights_sha256"]


def test_the_training_curve_on_hdfs_is_a_png(pipeline):
    assert _object(pipeline, f"{_card(pipeline)['model_dir']}/training_curve.png")[:8] == b"\x89PNG\r\n\x1a\n"


def test_training_read_every_training_row_from_hdfs_once_per_epoch(pipeline):
    splits = _read(pipeline, "flights/clean", ["split"]).column("split").to_pylist()
    assert [h["rows"] for h in _card(pipeline)["history"]] == [splits.count("train")] * 2
