"""The pipeline on a real Spark standalone cluster (a master and two workers on 127.0.0.1).

Only the master URL changes; Horovod's two ranks must land on different workers. A training rank's
process SIGKILLed mid-run from outside is healed by the train job itself.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cluster import spark_env, standalone_cluster
from flights_sample import write_sample
from shardlake import delta_io
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
def cluster_run(cluster, tmp_path_factory):
    """Run the whole pipeline once on the cluster, noting which workers hosted Horovod ranks."""
    root = tmp_path_factory.mktemp("cluster-run")
    sample, rows = write_sample(root / "data", every=200)
    lake = Lake.at(root / "lake")
    command = [sys.executable, "-m", "jobs.pipeline", "--logical-date", "2024-01-01",
               f"spark.master={cluster.master_url}", f"lake.root={lake.root}", f"dataset.source.path={sample}",
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
    return {"lake": lake, "rows": rows, "workers_with_ranks": workers_with_ranks}


KEY = ["year", "month", "day", "carrier", "flight", "origin", "sched_dep_time"]


def test_horovod_ranks_run_on_both_workers(cluster_run):
    assert cluster_run["workers_with_ranks"] == {0, 1}


def test_every_clean_flight_gets_exactly_one_prediction_on_the_cluster(spark, cluster_run):
    lake = cluster_run["lake"]
    clean = delta_io.read_version(spark, lake.table("flights", "clean")).select(*KEY)
    predicted = delta_io.read_version(spark, lake.table("flights", "predictions")).select(*KEY)
    assert sorted(predicted.collect()) == sorted(clean.collect())


def test_cluster_ingest_accounts_for_every_source_row(spark, cluster_run):
    lake = cluster_run["lake"]
    clean = delta_io.read_version(spark, lake.table("flights", "clean")).count()
    quarantined = delta_io.read_version(spark, lake.table("flights", "quarantine")).count()
    assert clean + quarantined == len(cluster_run["rows"])


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
