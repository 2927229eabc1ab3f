"""The training job (jobs/train.py) as a user runs it: the console script in its own process, on a tiny table.

A successful run must exit 0 and print no traceback (a traceback in a good run's log hides the
ones that matter), and it must run the same when started outside ``make``.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from shardlake.lake import Lake
from shardlake.training.sample import flights_like_frame, write_clean_table

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parent.parent
TRAIN = Path(sys.executable).parent / "shardlake-train"
SYSTEM_PYTHON = Path("/usr/bin/python3")


@pytest.fixture(scope="module")
def lake(spark, tmp_path_factory) -> Lake:
    """A lake holding only a small clean table (two files per split), as the ingest would leave it."""
    lake = Lake.at(tmp_path_factory.mktemp("train-job") / "lake")
    write_clean_table(spark, lake.table("flights", "clean"), flights_like_frame(2000, seed=3, shards=2))
    return lake


def _make_env() -> dict[str, str]:
    """The environment make gives a job (Makefile: SPARK_LOCAL_IP, PYSPARK_PYTHON)."""
    return {**os.environ, "SPARK_LOCAL_IP": "127.0.0.1", "PYSPARK_PYTHON": sys.executable}


def _train(lake: Lake, run_id: str, env: dict[str, str], *overrides: str) -> subprocess.CompletedProcess:
    command = [str(TRAIN), "--run-id", run_id, f"lake.root={lake.root}", "train.epochs=1", "train.batch_size=256",
               "train.num_proc=2", "spark.settings.spark.driver.memory=1g", *overrides]
    return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


def _log(done: subprocess.CompletedProcess) -> str:
    return f"exit {done.returncode}\n--- stdout\n{done.stdout[-4000:]}\n--- stderr\n{done.stderr[-8000:]}"


@pytest.mark.parametrize("backend", ["horovod", "torch_distributor"])
def test_a_successful_training_run_prints_no_traceback(lake, backend):
    done = _train(lake, f"quiet-{backend}", _make_env(), f"train.backend={backend}")
    assert done.returncode == 0, _log(done)
    assert "Traceback" not in done.stdout + done.stderr, _log(done)
    # No ERROR or WARN line either (log4j's level is third in Spark's lines: "26/12/07 03:15:45 ERROR
    # ContextFactory: ..."), such as the lineage listener's notes on every query; Spark's two one-time
    # notices at start-up (no native Hadoop library; a plan description truncated) are not about the run.
    notices = r"(?!NativeCodeLoader|SparkStringUtils: Truncated)"
    assert not re.findall(rf"^\S+ \S+ (?:ERROR|WARN) {notices}.*$", done.stderr, re.M), _log(done)


@pytest.mark.skipif(not SYSTEM_PYTHON.exists(), reason="needs a python3 outside the venv")
def test_the_console_script_trains_outside_make(lake, tmp_path):
    foreign = tmp_path / "foreign-bin"
    foreign.mkdir()
    (foreign / "python3").symlink_to(SYSTEM_PYTHON)  # the first python3 on PATH is not the venv's
    env = {k: v for k, v in _make_env().items() if k != "PYSPARK_PYTHON"}
    env["PATH"] = f"{foreign}{os.pathsep}{env.get('PATH', '')}"
    done = _train(lake, "outside-make", env)
    assert done.returncode == 0, _log(done)
