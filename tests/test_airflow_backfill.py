"""Nightly runs whose logical date means something: a real `airflow dags backfill` over three daily intervals.

Each day lands in its own folder; the dataset names its source by interval (landing/{ds}/flights.csv).
Training runs on its own schedule (days 1 and 3 here), scoring every day. Then the middle interval
is cleared and run again: its predictions and summary must come out identical. Real Airflow
(SequentialExecutor, SQLite), real spark-submits of the jobs, the Delta tables read back with the
test session's Spark.
"""
from __future__ import annotations

import json

import pytest
from pyspark.sql import functions as F

from pipeline_helpers import BACKFILL_DAYS, DAG_ID, airflow, backfill, run_backfill, tail, task_states

pytestmark = pytest.mark.slow
DAY1, DAY2, DAY3 = BACKFILL_DAYS


def backfill_run_id(day: str) -> str:
    return f"backfill__{day}T00:00:00+00:00"


def normalised(value):
    """A value as compared across runs: floats to 9 significant digits (Spark may sum partitions in another
    order), JSON text parsed and normalised alike."""
    if isinstance(value, float):
        return float(f"{value:.9g}")
    if isinstance(value, dict):
        return {k: normalised(v) for k, v in sorted(value.items())}
    if isinstance(value, list):
        return [normalised(v) for v in value]
    if isinstance(value, str) and value.startswith("{"):
        return json.dumps(normalised(json.loads(value)), sort_keys=True)
    return value


def rows(spark, path) -> list[tuple]:
    """A table's rows, normalised and sorted; ingest_runs without its report text (it holds the run's seconds)."""
    frame = spark.read.format("delta").load(str(path))
    frame = frame.drop("report_json") if "report_json" in frame.columns else frame
    return sorted((tuple(repr(normalised(v)) for v in r) for r in frame.collect()))


@pytest.fixture(scope="module")
def backfilled(tmp_path_factory, spark):
    """The backfill, the tables after it, then the middle day cleared and backfilled again."""
    run = run_backfill(tmp_path_factory.mktemp("airflow-backfill"))
    flights = run.lake / "flights"
    tables = {"predictions": flights / "predictions", "summary": flights / "inference_summary",
              "registry": run.lake / "_registry" / "models", "ingest_runs": flights / "ingest_runs"}
    before = {name: rows(spark, path) for name, path in tables.items()}
    states = {day: task_states(run.env, backfill_run_id(day)) for day in BACKFILL_DAYS}
    cleared = airflow(run.env, "tasks", "clear", DAG_ID, "-s", DAY2, "-e", DAY2, "-y")
    assert cleared.returncode == 0, tail(cleared)
    again = backfill(run.env, run.conf, DAY2, DAY2)
    assert again.returncode == 0, tail(again, 12000)
    after = {name: rows(spark, path) for name, path in tables.items()}
    print(f"airflow dags backfill of 3 days: {run.seconds:.0f} s")
    return {"run": run, "before": before, "after": after, "states": states,
            "states_again": task_states(run.env, backfill_run_id(DAY2)), "tables": tables}


def test_every_interval_scores_and_training_follows_its_schedule(backfilled):
    states = backfilled["states"]
    trained = {"ingest": "success", "retrain": "success", "train": "success", "gate": "success", "infer": "success"}
    scored_only = {**trained, "train": "skipped", "gate": "skipped"}
    assert (states[DAY1], states[DAY2], states[DAY3]) == (trained, scored_only, trained)


def test_each_interval_ingests_its_own_landing_folder(spark, backfilled):
    runs = spark.read.format("delta").load(str(backfilled["tables"]["ingest_runs"]))
    read = {r["run_id"]: r["rows_read"] for r in runs.collect()}
    assert read == {f"airflow-flights-{day}": n for day, n in backfilled["run"].rows_per_day.items()}


def test_each_interval_is_scored_on_the_version_its_ingest_produced(spark, backfilled):
    tables = backfilled["tables"]
    produced = {r["run_id"].removeprefix("airflow-flights-"): r["table_version"]
                for r in spark.read.format("delta").load(str(tables["ingest_runs"])).collect()}
    summary = spark.read.format("delta").load(str(tables["summary"])).where(F.col("scope") == "overall")
    scored = {str(r["logical_date"]): r["source_version"] for r in summary.collect()}
    assert scored == produced and len(set(produced.values())) == 3


def test_days_between_trainings_are_scored_by_the_model_the_gate_left_in_production(spark, backfilled):
    tables = backfilled["tables"]
    summary = spark.read.format("delta").load(str(tables["summary"])).where(F.col("scope") == "overall")
    model = {str(r["logical_date"]): r["model_version"] for r in summary.collect()}
    registry = spark.read.format("delta").load(str(tables["registry"]))
    production = registry.where(F.col("stage") == "production").first()["model_version"]
    assert model[DAY1] == model[DAY2] != model[DAY3] == production
    assert summary.count() == 3  # one overall row per interval


def test_clearing_and_rerunning_the_middle_interval_reproduces_it(backfilled):
    assert backfilled["states_again"] == backfilled["states"][DAY2]
    for name in ("predictions", "summary", "registry", "ingest_runs"):
        assert backfilled["after"][name] == backfilled["before"][name], f"{name} changed when {DAY2} ran again"
