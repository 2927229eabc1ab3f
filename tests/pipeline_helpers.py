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


BACKFILL_DAYS = ("2024-01-01", "2024-01-02", "2024-01-03")


@dataclass
class Backfill:
    """A real `airflow dags backfill` of the pipeline over BACKFILL_DAYS, one landing folder per day."""

    env: dict[str, str] = field(repr=False)
    conf: dict
    lake: Path
    rows_per_day: dict[str, int]
    seconds: float


def write_landing(root: Path, sample_rows: list[str], header: str) -> dict[str, int]:
    """The sample split into one landing folder per day (consecutive thirds of the year); rows per day."""
    third = -(-len(sample_rows) // len(BACKFILL_DAYS))
    counts = {}
    for index, day in enumerate(BACKFILL_DAYS):
        rows = sample_rows[index * third:(index + 1) * third]
        folder = root / day
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "flights.csv").write_text("\n".join([header, *rows]) + "\n", encoding="utf-8")
        counts[day] = len(rows)
    return counts


def backfill(env: dict[str, str], conf: dict, start: str, end: str) -> subprocess.CompletedProcess:
    """`airflow dags backfill` of [start, end], no retries (a failure shows at once)."""
    return airflow(env, "dags", "backfill", DAG_ID, "-s", start, "-e", end, "--conf", json.dumps(conf),
                   "--disable-retry", timeout=1800)


def run_backfill(root: Path) -> Backfill:
    """Three daily intervals backfilled: training on days 1 and 3 (retrain_every_days=2), scoring every day.

    ``train.promote_margin=-1`` makes the day-3 candidate replace the day-1 model, so the days are
    scored by two models and a re-run of day 2 has to find its own.
    """
    from flights_sample import flights_csv_lines

    ensure_airflow_venv()
    lines = flights_csv_lines()
    sample = lines[1::100]
    rows_per_day = write_landing(root / "landing", sample, lines[0])
    lake = root / "lake"
    conf = {"retrain_every_days": 2, "overrides": [
        f"lake.root={lake}", f"dataset.source.path={root / 'landing'}/{{ds}}/flights.csv", "dataset.shards=4",
        "train.epochs=1", "train.promote_threshold=0.0", "train.promote_margin=-1.0"]}
    env = airflow_env(root / "airflow-home")
    started = time.monotonic()
    result = backfill(env, conf, BACKFILL_DAYS[0], BACKFILL_DAYS[-1])
    if result.returncode != 0:
        pytest.fail(f"airflow dags backfill {DAG_ID} failed ({result.returncode}):\n{tail(result, 12000)}")
    return Backfill(env, conf, lake, rows_per_day, time.monotonic() - started)


def task_states(env: dict[str, str], run_id: str) -> dict[str, str]:
    """State of each task of one DAG run, by task id."""
    listed = airflow(env, "tasks", "states-for-dag-run", DAG_ID, run_id, "--output", "json")
    assert listed.returncode == 0, tail(listed)
    table = next(line for line in reversed(listed.stdout.splitlines()) if line.startswith("[{"))
    return {t["task_id"]: t["state"] for t in json.loads(table)}
