"""Airflow: the DAG folder parses cleanly, and the pipeline DAG runs for real on a sample of the flights.

Airflow lives in its own venv (.venv-airflow, created here by scripts/airflow_env.sh when missing).
The tests drive it as a person would: scripts/airflow.sh (`dags test`, `tasks test`) and, for the
DagBag, a short script run by that venv's python. Every task is a real spark-submit of the project's
job; the tests read the Delta tables it wrote with the test session's Spark. No mocks of Spark,
Delta or Airflow.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import textwrap
from pathlib import Path

import pytest
import yaml

from pipeline_helpers import (DAG_ID, DAGS, LOGICAL_DATE, REPO, PipelineRun, airflow, airflow_env,
                              ensure_airflow_venv, tail)

TASKS = ["ingest", "retrain", "train", "gate", "infer"]
JOB_TASKS = {"ingest": "ingest", "train": "train", "gate": "promote", "infer": "infer"}
# A date without a DAG run: `tasks test` then takes its params as given (a run's conf would win).
OTHER_DATE = "2024-01-03"
DATA_TABLES = ("clean", "quarantine", "predictions", "inference_summary")


# ---------------------------------------------------------------------------------------------
# DagBag: parse the folder in the Airflow venv and report what Airflow sees, as JSON.

DAGBAG_REPORT = textwrap.dedent('''
    import copy, json, sys
    HEAVY = ("pyspark", "torch", "shardlake", "horovod", "petastorm", "delta", "deltalake")
    before = {m for m in sys.modules if m.split(".")[0] in HEAVY}
    from airflow.models import DagBag
    from airflow.models.param import ParamsDict

    bag = DagBag(include_examples=False)
    report = {"import_errors": {k: str(v)[-2000:] for k, v in bag.import_errors.items()},
              "heavy_imports": sorted({m.split(".")[0] for m in sys.modules if m.split(".")[0] in HEAVY} - before),
              "parse_seconds": sum(s.duration.total_seconds() for s in bag.dagbag_stats), "dags": {}}
    for dag_id, dag in bag.dags.items():
        tasks = {}
        for task in dag.tasks:
            tasks[task.task_id] = {
                "operator": type(task).__name__, "upstream": sorted(task.upstream_task_ids),
                "downstream": sorted(task.downstream_task_ids), "trigger_rule": str(task.trigger_rule),
                "retries": task.retries, "retry_delay_s": task.retry_delay.total_seconds(),
                "application": getattr(task, "application", None),
                "spark_binary": getattr(task, "_spark_binary", None), "jars": getattr(task, "jars", None),
                "env_vars": getattr(task, "env_vars", None), "conn_id": getattr(task, "_conn_id", None),
                "refused_exit_code": getattr(task, "refused_exit_code", None)}
        rendered = {}

        class TaskInstance:  # what the tasks before handed on (XCom), as a run would have it
            def __init__(self, gate):
                self.xcoms = {"ingest": {"table_version": 7}, "train": {"model_version": "m-new"}, "gate": gate}

            def xcom_pull(self, task_ids):
                return self.xcoms.get(task_ids)

        import pendulum
        cases = (("ingest", "ingest", {}, None), ("train", "train", {}, None), ("gate", "gate", {}, None),
                 ("infer", "infer", {"model_version": "m-1",
                                      "overrides": ["lake.root=/tmp/lake-{{ ds_nodash }}", "train.epochs=1"]}, None),
                 ("infer_after_gate", "infer", {}, {"serving_version": "m-served"}),
                 ("infer_without_gate", "infer", {}, None))
        for name, task_id, params, gate in cases:
            task = copy.deepcopy(dag.get_task(task_id))
            values = {**dag.params.dump(), **params}
            task.render_template_fields({"ds": "2024-01-02", "ds_nodash": "20240102", "dag": dag,
                                         "data_interval_end": pendulum.datetime(2024, 1, 3, tz="UTC"),
                                         "ti": TaskInstance(gate), "task": task, "params": ParamsDict(values)})
            rendered[name] = task.application_args
        report["dags"][dag_id] = {
            "order": [t.task_id for t in dag.topological_sort()], "tasks": tasks, "rendered": rendered,
            "schedule": str(dag.schedule_interval), "start_date": dag.start_date.isoformat(),
            "catchup": dag.catchup, "max_active_runs": dag.max_active_runs,
            "params": dag.params.dump()}
    print("DAGBAG_REPORT " + json.dumps(report, default=str))
''')


def dagbag_report(tmp_path: Path, dags: Path = DAGS) -> dict:
    """What Airflow's DagBag makes of ``dags`` (import errors, DAGs, tasks, rendered arguments)."""
    venv = ensure_airflow_venv()
    script = tmp_path / "dagbag_report.py"
    script.write_text(DAGBAG_REPORT)
    result = subprocess.run([str(venv / "bin" / "python"), str(script)], env=airflow_env(tmp_path / "home", dags),
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, tail(result)
    line = next(x for x in result.stdout.splitlines() if x.startswith("DAGBAG_REPORT "))
    return json.loads(line.removeprefix("DAGBAG_REPORT "))


@pytest.fixture(scope="module")
def dagbag(tmp_path_factory) -> dict:
    return dagbag_report(tmp_path_factory.mktemp("dagbag"))


def test_dag_folder_imports_without_errors_or_heavy_imports(dagbag):
    assert dagbag["import_errors"] == {}
    assert dagbag["heavy_imports"] == []
    assert dagbag["parse_seconds"] < 10


def test_one_dag_per_configured_dataset_with_the_pipeline_in_order(dagbag):
    configured = yaml.safe_load((DAGS / "pipelines.yaml").read_text())["pipelines"]
    assert sorted(dagbag["dags"]) == sorted(f"shardlake_{name}" for name in configured)
    dag = dagbag["dags"][DAG_ID]
    assert dag["order"] == TASKS
    tasks = dag["tasks"]
    assert (tasks["ingest"]["downstream"], tasks["retrain"]["downstream"], tasks["train"]["downstream"],
            tasks["gate"]["downstream"], tasks["infer"]["upstream"]) == (
        ["retrain"], ["infer", "train"], ["gate"], ["infer"], ["gate", "retrain"])
    assert tasks["retrain"]["operator"] == "BranchPythonOperator"
    # infer runs every interval: after the gate when training ran, straight after the branch when it did not;
    # never after a failed gate or ingest.
    assert tasks["infer"]["trigger_rule"] == "none_failed_min_one_success"


def test_schedule_start_catchup_retries_and_params_are_explicit(dagbag):
    dag = dagbag["dags"][DAG_ID]
    assert (dag["schedule"], dag["start_date"], dag["catchup"], dag["max_active_runs"]) == (
        "@daily", "2024-01-01T00:00:00+00:00", False, 1)
    for task in dag["tasks"].values():
        assert task["retries"] >= 1 and task["retry_delay_s"] > 0
    assert dag["params"] == {"dataset": "flights", "conf": ["conf/base.yaml"], "overrides": [], "model_version": None,
                             "retrain": None, "retrain_every_days": 7}


def test_tasks_submit_the_projects_jobs_with_its_spark_and_delta_jars(dagbag):
    from jobs import promote
    from shardlake.session import DELTA_ARTIFACTS, DELTA_VERSION, OPENLINEAGE_ARTIFACT

    tasks = dagbag["dags"][DAG_ID]["tasks"]
    jobs = JOB_TASKS
    for task_id, task in ((t, tasks[t]) for t in jobs):
        assert task["operator"] == "ShardlakeJobOperator"
        assert task["application"] == str(REPO / "jobs" / f"{jobs[task_id]}.py")
        assert Path(task["application"]).is_file()
        assert task["spark_binary"] == str(REPO / ".venv" / "bin" / "spark-submit")
        assert task["env_vars"]["PYSPARK_PYTHON"] == str(REPO / ".venv" / "bin" / "python")
        assert [Path(j).name for j in task["jars"].split(",")] == [
            *[f"{a}-{DELTA_VERSION}.jar" for a in DELTA_ARTIFACTS], "-".join(OPENLINEAGE_ARTIFACT[1:]) + ".jar"]
        assert task["conn_id"] == "spark_local"
    assert tasks["gate"]["refused_exit_code"] == promote.REFUSED


def test_run_params_become_job_arguments_rendered_per_interval(dagbag):
    rendered = dagbag["dags"][DAG_ID]["rendered"]
    conf = str(REPO / "conf" / "base.yaml")
    shared = ["--conf", conf, "dataset=flights"]
    assert rendered["ingest"] == ["--run-id", "airflow-flights-2024-01-02", "--logical-date", "2024-01-02",
                                  "--interval-end", "2024-01-03", *shared]
    assert rendered["train"] == ["--table-version", "7", "--json", *shared]
    assert rendered["gate"] == ["--model-version=m-new", "--json", *shared]
    infer = ["--logical-date", "2024-01-02", "--table-version", "7", "--reuse-interval"]
    assert rendered["infer"] == [*infer, "--model-version=m-1", *shared, "lake.root=/tmp/lake-20240102",
                                 "train.epochs=1"]
    assert rendered["infer_after_gate"] == [*infer, "--model-version=m-served", *shared]
    assert rendered["infer_without_gate"] == [*infer, *shared]


def test_factory_builds_a_dag_per_dataset_and_refuses_unknown_settings(tmp_path):
    folder = tmp_path / "dags"
    shutil.copytree(DAGS, folder, ignore=shutil.ignore_patterns("__pycache__"))
    config = yaml.safe_load((folder / "pipelines.yaml").read_text())
    config["pipelines"]["weather"] = {"schedule": "@hourly", "retries": 1}
    (folder / "pipelines.yaml").write_text(yaml.safe_dump(config))
    report = dagbag_report(tmp_path, folder)
    assert report["import_errors"] == {}
    assert sorted(report["dags"]) == ["shardlake_flights", "shardlake_weather"]
    weather = report["dags"]["shardlake_weather"]
    assert (weather["schedule"], weather["params"]["dataset"], weather["order"]) == ("@hourly", "weather", TASKS)

    config["pipelines"]["weather"] = {"shedule": "@hourly"}
    (folder / "pipelines.yaml").write_text(yaml.safe_dump(config))
    errors = dagbag_report(tmp_path, folder)["import_errors"]
    assert len(errors) == 1 and "unknown setting(s) ['shedule']" in next(iter(errors.values()))


# ---------------------------------------------------------------------------------------------
# One real run of the pipeline DAG on a ~1% sample (about 3.4k flights), into a temporary lake.

@pytest.fixture(scope="module")
def dag_run(airflow_pipeline_run) -> PipelineRun:
    """The session's one DAG run (conftest.py): tests/test_notebooks.py reads the same lake."""
    return airflow_pipeline_run


def delta_rows(spark, path: Path) -> list[tuple]:
    """Every row of the latest version of a Delta table, as sortable tuples."""
    return sorted(tuple(str(v) for v in row) for row in spark.read.format("delta").load(str(path)).collect())


def delta_frame(spark, path: Path):
    """The latest version of a (small) Delta table as pandas."""
    return spark.read.format("delta").load(str(path)).toPandas()


@pytest.mark.slow
def test_every_task_ran_once_in_order_and_succeeded(dag_run):
    states = dag_run.states
    assert {t: s["state"] for t, s in states.items()} == {t: "success" for t in TASKS}
    ends = [states[t]["end_date"] for t in TASKS]
    assert all(ends) and ends == sorted(ends)
    print(f"airflow dags test {DAG_ID}: {dag_run.seconds:.0f} s")


@pytest.mark.slow
def test_the_run_wrote_clean_quarantine_model_and_predictions(spark, dag_run):
    flights = dag_run.lake / "flights"
    clean, quarantine = delta_frame(spark, flights / "clean"), delta_frame(spark, flights / "quarantine")
    runs = delta_frame(spark, flights / "ingest_runs")
    run = runs[runs["run_id"] == f"airflow-flights-{LOGICAL_DATE}"].iloc[0]
    assert run["rows_read"] == len(dag_run.rows) == len(clean) + len(quarantine) + run["duplicates_removed"]
    assert sorted(clean["shard"].unique()) == [0, 1, 2, 3]

    registry = delta_frame(spark, dag_run.lake / "_registry" / "models")
    production = registry[(registry["dataset"] == "flights") & (registry["stage"] == "production")]
    assert len(production) == 1
    model_version = production.iloc[0]["model_version"]
    assert json.loads(production.iloc[0]["card_json"])["config"]["train"]["epochs"] == 1

    predictions = delta_frame(spark, flights / "predictions")
    assert len(predictions) == len(clean)
    assert set(predictions["model_version"]) == {model_version}
    assert {str(d) for d in predictions["logical_date"]} == {LOGICAL_DATE}
    assert predictions["score"].between(0, 1).all()
    summary = delta_frame(spark, flights / "inference_summary")
    overall = summary[summary["scope"] == "overall"]
    assert len(overall) == 1 and overall.iloc[0]["rows"] == len(clean)


@pytest.mark.slow
def test_running_the_ingest_again_for_the_same_interval_leaves_identical_tables(spark, dag_run):
    flights = dag_run.lake / "flights"
    before = {name: delta_rows(spark, flights / name) for name in DATA_TABLES}
    result = airflow(dag_run.env, "tasks", "test", DAG_ID, "ingest", LOGICAL_DATE,
                     "--task-params", json.dumps(dag_run.params))
    assert result.returncode == 0, tail(result)
    after = {name: delta_rows(spark, flights / name) for name in DATA_TABLES}
    for name in DATA_TABLES:
        assert after[name] == before[name], f"{name} changed when the ingest ran again for {LOGICAL_DATE}"


@pytest.mark.slow
def test_a_gate_refusal_is_an_answer_that_keeps_production_and_is_not_retried(spark, dag_run):
    from shardlake import registry as R

    registry_path = dag_run.lake / "_registry" / "models"
    frame = delta_frame(spark, registry_path)
    production = json.loads(frame[frame["stage"] == "production"].iloc[0]["card_json"])
    # A second candidate (the same weights under another version): the gate judges it against production.
    candidate = {**production, "model_version": f"{production['model_version']}-challenger"}
    R.register(spark, str(registry_path), candidate)
    params = {"overrides": [*dag_run.params["overrides"], "train.promote_threshold=1.01"],
              "model_version": candidate["model_version"]}
    result = airflow(dag_run.env, "tasks", "test", DAG_ID, "gate", OTHER_DATE, "--task-params", json.dumps(params))
    output = tail(result, 20000)
    assert result.returncode == 0, output
    assert "jobs/promote.py refused (exit code 3)" in output
    assert "does not meet the promotion threshold 1.01" in output and "UP_FOR_RETRY" not in output
    after = delta_frame(spark, registry_path).set_index("model_version")
    assert (after.loc[production["model_version"], "stage"], after.loc[candidate["model_version"], "stage"]) == (
        "production", "candidate")
    assert after.loc[candidate["model_version"], "champion_version"] == production["model_version"]


def _json_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.mark.slow
def test_the_jobs_lineage_hangs_under_their_task_runs_and_names_no_credential(dag_run):
    import os

    folder = dag_run.lake / "_lineage"
    airflow_events = _json_lines(Path(dag_run.env["AIRFLOW_HOME"]) / "lineage" / "airflow.jsonl")
    task_runs = {e["job"]["name"]: e["run"]["runId"] for e in airflow_events if e["eventType"] == "COMPLETE"}
    jobs = {e["job"]["name"]: e["run"]["facets"]["parent"] for e in _json_lines(folder / "jobs.jsonl")
            if e["eventType"] == "COMPLETE"}
    for job, task in (("ingest.flights", "ingest"), ("train.flights", "train"), ("infer.flights", "infer")):
        parent = jobs[job]
        assert parent["job"]["name"] == f"{DAG_ID}.{task}"
        assert parent["run"]["runId"] == task_runs[f"{DAG_ID}.{task}"]
        assert parent["root"]["job"]["name"] == DAG_ID
    spark_parents = {e["run"]["facets"].get("parent", {}).get("job", {}).get("name") for e in
                     _json_lines(folder / "spark.jsonl")}
    assert {f"{DAG_ID}.ingest", f"{DAG_ID}.infer"} <= spark_parents
    for events in (folder / "jobs.jsonl", folder / "spark.jsonl", Path(dag_run.env["AIRFLOW_HOME"]) / "lineage"
                   / "airflow.jsonl"):
        text = events.read_text()
        assert os.environ["AWS_SECRET_ACCESS_KEY"] not in text and os.environ["AWS_ACCESS_KEY_ID"] not in text
