"""Faults during real runs: killed executors and training ranks, concurrent writers.

Each test starts the real jobs as separate processes (as spark-submit or Airflow would), injects
the fault from outside with a signal, and checks the tables afterwards. Each adds a row to the
reliability report.
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
from pyspark.testing import assertDataFrameEqual

from cluster import spark_env, standalone_cluster
from flights_sample import write_sample
from shardlake import delta_io
from shardlake.config import load_config
from shardlake.lake import Lake
from shardlake.stages.ingest import run_ingest

pytestmark = [pytest.mark.slow, pytest.mark.reliability]
REPO = Path(__file__).resolve().parent.parent
KEY = ["year", "month", "day", "carrier", "flight", "origin", "sched_dep_time"]


def _job(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", f"jobs.{module}", *args]


def _overrides(lake: Lake, sample: Path, *extra: str) -> list[str]:
    return [f"lake.root={lake.root}", f"dataset.source.path={sample}", "dataset.shards=4",
            "spark.settings.spark.driver.memory=1g", *extra]


def _reference_clean(spark, tmp_path: Path, sample: Path):
    """The clean table an undisturbed in-process ingest of the same sample produces."""
    config = load_config([REPO / "conf" / "base.yaml"], [f"dataset.source.path={sample}", "dataset.shards=4"])
    lake = Lake.at(tmp_path / "reference-lake")
    run_ingest(spark, lake, config.dataset, "reference", REPO)
    return delta_io.read_version(spark, lake.table("flights", "clean"))


def _duplicates(df) -> int:
    return df.count() - df.select(*KEY).distinct().count()


def test_ingest_survives_a_killed_executor_with_exact_content(spark, tmp_path, reliability):
    sample, _ = write_sample(tmp_path / "data", every=20)
    lake = Lake.at(tmp_path / "lake")
    with standalone_cluster(tmp_path / "cluster", workers=2, cores=1, memory="2g") as cluster:
        command = _job("ingest", "--run-id", "killed-executor", f"spark.master={cluster.master_url}",
                       "spark.settings.spark.executor.memory=1g", *_overrides(lake, sample))
        log = (tmp_path / "ingest.log").open("w")
        proc = subprocess.Popen(command, cwd=REPO, env=spark_env(), stdout=log, stderr=subprocess.STDOUT)
        killed = []
        deadline = time.monotonic() + 300
        while proc.poll() is None and not killed and time.monotonic() < deadline:
            pids = cluster.executor_pids(0)
            if pids:
                time.sleep(8)  # let tasks start on it, then pull the executor away mid-job
                for pid in cluster.executor_pids(0):
                    os.kill(pid, signal.SIGKILL)
                    killed.append(pid)
            time.sleep(0.5)
        assert proc.wait(timeout=900) == 0, (tmp_path / "ingest.log").read_text()[-4000:]
    assert killed, "no executor was running on worker 0 to kill"
    actual = delta_io.read_version(spark, lake.table("flights", "clean"))
    expected = _reference_clean(spark, tmp_path, sample)
    lost = expected.join(actual, on=KEY, how="left_anti").count()
    reliability.record("executor killed during ingest (cluster)", f"finished; {len(killed)} executor(s) killed",
                       lost, _duplicates(actual))
    assertDataFrameEqual(actual, expected)


def test_two_concurrent_ingests_leave_no_duplicates(spark, tmp_path, reliability):
    sample, _ = write_sample(tmp_path / "data", every=50)
    lake = Lake.at(tmp_path / "lake")
    procs = [subprocess.Popen(_job("ingest", "--run-id", f"concurrent-{i}", *_overrides(lake, sample)), cwd=REPO,
                              env=spark_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for i in range(2)]
    outputs = [p.communicate(timeout=900)[0] for p in procs]
    codes = [p.returncode for p in procs]
    retried = [i for i, code in enumerate(codes) if code != 0]
    for i in retried:  # Delta refused one writer with a conflict: running it again must succeed
        assert "Concurrent" in outputs[i] or "conflict" in outputs[i].lower(), outputs[i][-3000:]
        rerun = subprocess.run(_job("ingest", "--run-id", f"concurrent-{i}-retry", *_overrides(lake, sample)),
                               cwd=REPO, env=spark_env(), capture_output=True, text=True, timeout=900)
        assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    actual = delta_io.read_version(spark, lake.table("flights", "clean"))
    expected = _reference_clean(spark, tmp_path, sample)
    lost = expected.join(actual, on=KEY, how="left_anti").count()
    reliability.record("two concurrent ingests of the same input",
                       f"exit codes {codes}; {len(retried)} retried after a conflict", lost, _duplicates(actual))
    assertDataFrameEqual(actual, expected)


def _gloo_ranks() -> list[int]:
    out = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True, check=True).stdout
    return [int(line.split(None, 1)[0]) for line in out.splitlines()[1:] if "gloo_exec_fn" in line]


def test_killed_training_rank_fails_clearly_and_the_rerun_resumes(spark, tmp_path, reliability):
    sample, _ = write_sample(tmp_path / "data", every=50)
    lake = Lake.at(tmp_path / "lake")
    overrides = _overrides(lake, sample, "train.epochs=4", "train.batch_size=32", "train.promote_threshold=0.0",
                           "train.early_stopping_patience=10")
    assert subprocess.run(_job("ingest", "--run-id", "for-training", *overrides), cwd=REPO, env=spark_env(),
                          capture_output=True, timeout=900).returncode == 0
    run_dir = lake.model_dir("flights", "kill-test")
    log = (tmp_path / "train.log").open("w")
    proc = subprocess.Popen(_job("train", "--run-id", "kill-test", *overrides), cwd=REPO, env=spark_env(),
                            stdout=log, stderr=subprocess.STDOUT)
    killed = False
    deadline = time.monotonic() + 600
    while proc.poll() is None and time.monotonic() < deadline:
        ranks = _gloo_ranks()
        if (run_dir / "checkpoint.pt").exists() and ranks and not killed:
            os.kill(ranks[-1], signal.SIGKILL)  # a worker process dies after the first checkpoint
            killed = True
        time.sleep(0.2)
    code = proc.wait(timeout=600)
    output = (tmp_path / "train.log").read_text()
    assert killed and code != 0, output[-3000:]
    assert "start the same run again to resume" in output
    rerun = subprocess.run(_job("train", "--run-id", "kill-test", *overrides), cwd=REPO, env=spark_env(),
                           capture_output=True, text=True, timeout=900)
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    card = json.loads((run_dir / "card.json").read_text())
    reliability.record("training rank killed after a checkpoint",
                       f"failed with a resume hint; rerun resumed from epoch {card['resumed_from']}", 0, 0)
    assert card["resumed_from"] is not None and card["resumed_from"] >= 1
    assert [h["epoch"] for h in card["history"]] == [0, 1, 2, 3]
