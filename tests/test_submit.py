"""shardlake-submit runs a job under spark-submit from a bare environment (no venv on PATH, nothing exported)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from jobs.submit import submit_command
from shardlake import delta_io
from shardlake.lake import Lake

from ingest_helpers import HEADER, toy_config, write_csv

REPO = Path(__file__).resolve().parent.parent


def test_the_command_points_spark_at_this_interpreter_and_the_delta_jars_unless_the_user_chose():
    command, env = submit_command(["jobs/ingest.py"], {"PATH": "/usr/bin:/bin"})
    assert (env["PYSPARK_PYTHON"], env["PYSPARK_DRIVER_PYTHON"]) == (sys.executable, sys.executable)
    assert command[0] == str(Path(env["SPARK_HOME"]) / "bin" / "spark-submit") and command[-1] == "jobs/ingest.py"
    assert command[1] == "--jars" and "delta-spark_2.12" in command[2]
    chosen, env = submit_command(["--jars", "mine.jar", "job.py"], {"PYSPARK_PYTHON": "/opt/py"})
    assert chosen[1:] == ["--jars", "mine.jar", "job.py"] and env["PYSPARK_PYTHON"] == "/opt/py"


@pytest.mark.slow
def test_an_ingest_runs_under_spark_submit_from_a_bare_environment(spark, tmp_path):
    source = write_csv(tmp_path / "orders.csv", HEADER, ["1,c1,10.0,2,DE,AB1,1", "2,c2,20.5,1,FR,CD2,1"])
    toy_config(tmp_path, source, tmp_path / "lake")
    bare = {"HOME": os.environ.get("HOME", "/root"), "PATH": "/usr/bin:/bin"}
    submit = Path(sys.executable).parent / "shardlake-submit"
    done = subprocess.run([str(submit), "--master", "local[1]", "jobs/ingest.py", "--run-id", "submitted",
                           f"dataset={tmp_path / 'toy.yaml'}", f"lake.root={tmp_path / 'lake'}"],
                          cwd=REPO, env=bare, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Traceback" not in done.stdout + done.stderr
    clean = delta_io.read_version(spark, Lake.at(tmp_path / "lake").table("toy", "clean"))
    assert sorted(r["order_id"] for r in clean.collect()) == [1, 2]
