"""The pipeline on a real Spark standalone cluster (a master and two workers on 127.0.0.1).

Only the master URL changes, and the lake and the source live on the test S3 server (the workers share
no folder): Horovod's two ranks must land on different workers, and every table, model file and plot
is read back straight from the server. A training rank's
process SIGKILLed mid-run from outside is healed by the train job itself.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

from cluster import spark_env, standalone_cluster
from flights_sample import write_sample
from lake_readback import KEY, keys, production_card
from shardlake.lake import Lake

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    with standalone_cluster(tmp_path_factory.mktemp("cluster"), workers=2, cores=1, memory="2g") as running:
        yield running


def _rank_processes(cluster) -> dict[int, int]:
    """Worker index of each Horovod rank process running now, by pid (a rank runs in its executor's work folder)."""
    out = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True, check=True).stdout
    ranks = {}
    for line in out.splitlines()[1:]:
        if "gloo_exec_fn" not in line:
            continue
        pid = int(line.split(None, 1)[0])
        try:
            cwd = os.readlink(f"/proc/{pid}/cwd")
        except OSError:
            continue
        ranks |= {pid: i for i in range(len(cluster.workers)) if cwd.startswith(str(cluster.worker_dir(i)))}
    return ranks


def _rank_workers(cluster) -> set[int]:
    """Which workers host a Horovod rank right now."""
    return set(_rank_processes(cluster).values())


@pytest.fixture(scope="module")
def cluster_run(cluster, s3_server, tmp_path_factory):
    """Run the whole pipeline once on the cluster with its source and lake on the S3 server only (the workers
    share nothing else: no folder), noting which workers hosted Horovod ranks.

    The source is a zip archive, as the flights data ships: the driver extracts it onto the store."""
    root = tmp_path_factory.mktemp("cluster-run")
    sample, rows = write_sample(root / "data", every=200)
    bucket = s3_server.bucket("cluster")
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zipped:
        zipped.write(sample, sample.name)
    with s3_server.filesystem().open_output_stream(f"{bucket}/landing/flights_sample.csv.zip") as out:
        out.write(archive.getvalue())
    lake = f"s3a://{bucket}/lake"
    command = [sys.executable, "-m", "jobs.pipeline", "--logical-date", "2024-01-01",
               f"spark.master={cluster.master_url}", f"lake.root={lake}",
               f"dataset.source.path=s3a://{bucket}/landing/flights_sample.csv.zip", *s3_server.overrides(),
               "dataset.shards=4", "train.epochs=2", "train.batch_size=64", "train.num_proc=2",
               "train.promote_threshold=0.0", "spark.settings.spark.executor.memory=1g",
               "spark.settings.spark.driver.memory=1g"]
    log_path = root / "pipeline.log"
    with log_path.open("w") as log:
        proc = subprocess.Popen(command, cwd=REPO, env=spark_env(), stdout=log, stderr=subprocess.STDOUT)
        workers_with_ranks: set[int] = set()
        while proc.poll() is None:
            workers_with_ranks |= _rank_workers(cluster)
            time.sleep(0.5)
    assert proc.returncode == 0, log_path.read_text()[-4000:]
    return {"lake": lake, "bucket": bucket, "rows": rows, "workers_with_ranks": workers_with_ranks}


def _production_card(s3_server, cluster_run) -> dict:
    return production_card(lambda table, columns: s3_server.read_delta(f"{cluster_run['lake']}/{table}", columns),
                           s3_server.read_object)


def test_horovod_ranks_run_on_both_workers(cluster_run):
    assert cluster_run["workers_with_ranks"] == {0, 1}


def test_every_clean_flight_gets_exactly_one_prediction_on_the_cluster(s3_server, cluster_run):
    clean = s3_server.read_delta(f"{cluster_run['lake']}/flights/clean", KEY)
    predicted = s3_server.read_delta(f"{cluster_run['lake']}/flights/predictions", KEY)
    assert keys(predicted) == keys(clean)


def test_cluster_ingest_accounts_for_every_source_row(s3_server, cluster_run):
    tables = [s3_server.read_delta(f"{cluster_run['lake']}/flights/{name}") for name in ("clean", "quarantine")]
    runs = s3_server.read_delta(f"{cluster_run['lake']}/flights/ingest_runs", ["rows_read", "duplicates_removed"])
    assert runs.to_pylist() == [{"rows_read": len(cluster_run["rows"]), "duplicates_removed": 0}]
    assert sum(t.num_rows for t in tables) == len(cluster_run["rows"])


def test_the_production_models_card_names_the_clean_table_version_on_s3(s3_server, cluster_run):
    card = _production_card(s3_server, cluster_run)
    clean = f"{cluster_run['lake']}/flights/clean"
    assert (card["table_path"], card["table_version"]) == (clean, s3_server.delta_table(clean).version())
    assert card["model_dir"].startswith(f"{cluster_run['lake']}/models/flights/")


def test_the_weights_on_s3_are_the_ones_the_card_registered(s3_server, cluster_run):
    card = _production_card(s3_server, cluster_run)
    weights = s3_server.read_object(f"{card['model_dir']}/model.safetensors")
    assert hashlib.sha256(weights).hexdigest() == card["weights_sha256"]


def test_the_training_curve_and_the_inference_plot_are_pngs_on_s3(s3_server, cluster_run):
    card = _production_card(s3_server, cluster_run)
    plots = [k for k in s3_server.object_keys(f"{cluster_run['bucket']}/lake/flights/inference_runs")
             if k.endswith(".png")]
    pngs = [s3_server.read_object(f"{card['model_dir']}/training_curve.png"), *map(s3_server.read_object, plots)]
    assert len(plots) == 1 and [png[:8] for png in pngs] == [b"\x89PNG\r\n\x1a\n"] * 2


def test_the_zipped_source_was_extracted_onto_the_store(s3_server, cluster_run):
    extracted = s3_server.object_keys(f"{cluster_run['bucket']}/lake/_staging")
    assert [k.rsplit("/", 1)[1] for k in extracted] == ["_EXTRACTED", "flights_sample.csv"]


def test_nothing_is_written_beside_the_lake_on_the_local_disk(cluster_run):
    # A lake root on s3a:// once became the local folder <cwd>/s3a:/bucket/lake.
    assert not (REPO / "s3a:").exists()


def test_no_object_the_pipeline_wrote_holds_the_secret_key_from_the_environment(s3_server, cluster_run):
    secret = os.environ["AWS_SECRET_ACCESS_KEY"].encode()
    written = s3_server.object_keys(cluster_run["bucket"])
    assert any(k.endswith("card.json") for k in written)
    assert [k for k in written if secret in s3_server.read_object(k)] == []


@pytest.fixture(scope="module")
def healed_training(cluster, spark, tmp_path_factory):
    """jobs/train.py on the cluster (3 epochs, 2 ranks); once the first epoch's checkpoint is written, one rank's
    process is SIGKILLed from outside, as a preempted node would lose it."""
    from shardlake.training.sample import flights_like_frame, write_clean_table

    root = tmp_path_factory.mktemp("healed")
    lake = Lake.at(root / "lake")
    write_clean_table(spark, lake.table("flights", "clean"), flights_like_frame(3000, seed=5, shards=3))
    command = [sys.executable, "-m", "jobs.train", "--json", f"spark.master={cluster.master_url}",
               f"lake.root={lake.root}", "train.epochs=3", "train.batch_size=64", "train.num_proc=2",
               "train.max_restarts=2", "train.early_stopping_patience=5", "spark.settings.spark.executor.memory=1g",
               "spark.settings.spark.driver.memory=1g"]
    log_path, killed = root / "train.log", None
    with log_path.open("w") as log:
        proc = subprocess.Popen(command, cwd=REPO, env=spark_env(), stdout=log, stderr=subprocess.STDOUT)
        while proc.poll() is None:
            ranks = _rank_processes(cluster)
            if killed is None and ranks and list(Path(lake.root).rglob("checkpoint.pt")):
                killed = min(ranks)
                os.kill(killed, signal.SIGKILL)
            time.sleep(0.2)
    output = log_path.read_text()
    assert proc.returncode == 0, output[-4000:]
    card = json.loads(next(Path(lake.root).rglob("card.json")).read_text())
    return {"card": card, "killed": killed, "output": output}


def test_a_rank_killed_on_a_worker_is_restarted_by_the_job_and_training_ends(healed_training, reliability):
    card = healed_training["card"]
    reliability.record("a training rank's process SIGKILLed on a cluster worker (max_restarts=2)",
                       "the job restarted training from the last checkpoint and finished", 0, 0)
    assert healed_training["killed"] is not None
    assert (card["restarts"], card["epochs_run"], [h["epoch"] for h in card["history"]]) == (1, 3, [0, 1, 2])
    assert card["resumed_from"] >= 1 and "restart 1 of 2" in healed_training["output"]
