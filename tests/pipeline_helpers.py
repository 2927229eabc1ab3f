"""Helpers shared by test modules: the Airflow venv and CLI, and one real run of the pipeline DAG.

Test modules must not import each other (importing one runs its module-level code and couples
the two); what more than one needs lives here. The DAG run itself is the session-scoped fixture
``airflow_pipeline_run`` in conftest.py, read by tests/test_airflow.py and tests/test_notebooks.py.
"""
from __future__ import annotations

import json
import os
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from flights_sample import write_sample

REPO = Path(__file__).resolve().parent.parent
DAGS = REPO / "airflow_dags"
AIRFLOW_VENV = Path(os.environ.get("AIRFLOW_VENV", REPO / ".venv-airflow"))
DAG_ID = "shardlake_flights"
LOGICAL_DATE = "2024-01-02"
RUN_ID = f"manual__{LOGICAL_DATE}T00:00:00+00:00"
# Output of a pip install that could not reach PyPI: then the venv cannot be built here, and the
# tests skip (saying so) rather than fail.
OFFLINE_SIGNS = ("Failed to establish a new connection", "Temporary failure in name resolution",
                 "No matching distribution found", "Network is unreachable", "ProxyError")


def ensure_airflow_venv() -> Path:
    """The Airflow venv, installed by scripts/airflow_env.sh if missing (idempotent: a stamp, then instant)."""
    result = subprocess.run([str(REPO / "scripts" / "airflow_env.sh"), str(AIRFLOW_VENV)],
                            capture_output=True, text=True, timeout=1200)
    output = result.stdout + result.stderr
    if result.returncode != 0:
        if result.returncode == 2 or any(sign in output for sign in OFFLINE_SIGNS):
            pytest.skip(f"cannot create the Airflow venv here (no Python 3.11 or no PyPI): {output[-600:]}")
        pytest.fail(f"scripts/airflow_env.sh failed ({result.returncode}):\n{output[-3000:]}")
    return AIRFLOW_VENV


def airflow_env(home: Path, dags: Path = DAGS) -> dict[str, str]:
    """Environment of an isolated Airflow: its own home (SQLite), this DAG folder, the local Spark connection."""
    env = dict(os.environ)
    env.update({
        "AIRFLOW_HOME": str(home),
        "AIRFLOW_VENV": str(AIRFLOW_VENV),
        "AIRFLOW__CORE__DAGS_FOLDER": str(dags),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__METRICS__TIMER_UNIT_CONSISTENCY": "True",
        "AIRFLOW_CONN_SPARK_LOCAL": json.dumps({"conn_type": "spark", "host": "local[2]"}),
        "SHARDLAKE_HOME": str(REPO),
        "SPARK_LOCAL_IP": "127.0.0.1",
    })
    return env


def airflow(env: dict[str, str], *args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    """One Airflow CLI command through scripts/airflow.sh (migrates a new home's database first)."""
    return subprocess.run([str(REPO / "scripts" / "airflow.sh"), *args], env=env, capture_output=True,
                          text=True, timeout=timeout)


def tail(result: subprocess.CompletedProcess, chars: int = 4000) -> str:
    return (result.stdout + result.stderr)[-chars:]


@dataclass
class PipelineRun:
    """A finished `airflow dags test` of the pipeline: its environment, params and lake."""

    env: dict[str, str] = field(repr=False)
    params: dict
    lake: Path
    rows: list[str]
    seconds: float
    states: dict[str, dict]


def run_pipeline_dag(root: Path) -> PipelineRun:
    """`airflow dags test` of the pipeline DAG on a ~1% sample (about 3.4k flights) into ``root``/lake.

    Skips when the Airflow venv cannot be built here; fails (with the run's output) when the run fails.
    """
    ensure_airflow_venv()
    sample, rows = write_sample(root / "data", every=100)
    lake = root / "lake"
    params = {"overrides": [f"lake.root={lake}", f"dataset.source.path={sample}", "dataset.shards=4",
                            "train.epochs=1", "train.promote_threshold=0.0"]}
    env = airflow_env(root / "airflow-home")
    started = time.monotonic()
    result = airflow(env, "dags", "test", DAG_ID, LOGICAL_DATE, "--conf", json.dumps(params))
    seconds = time.monotonic() - started
    if result.returncode != 0:
        pytest.fail(f"airflow dags test {DAG_ID} failed ({result.returncode}):\n{tail(result, 12000)}")
    listed = airflow(env, "tasks", "states-for-dag-run", DAG_ID, RUN_ID, "--output", "json")
    assert listed.returncode == 0, tail(listed)
    table = next(line for line in reversed(listed.stdout.splitlines()) if line.startswith("[{"))
    states = {t["task_id"]: t for t in json.loads(table)}
    return PipelineRun(env, params, lake, rows, seconds, states)
