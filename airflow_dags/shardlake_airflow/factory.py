"""One pipeline DAG per dataset of pipelines.yaml: ingest -> retrain? -> (train -> gate) -> infer.

Each task spark-submits a job of the project (jobs/<job>.py) with the project venv's spark-submit
and the Delta jars. Parsing a DAG reads one small YAML file and the environment, nothing else: no
database, no Variables, no Spark.

Where the project is, taken from the environment of the process that parses the DAGs:
  SHARDLAKE_HOME   the checkout with jobs/ and conf/ (default: the folder above the DAG folder)
  SHARDLAKE_VENV   the project venv holding spark-submit (default: $SHARDLAKE_HOME/.venv)
  SHARDLAKE_JARS   the Delta jar cache (default: ~/.cache/shardlake/jars, as libs/shardlake/session.py)
"""
from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pendulum
import yaml
from airflow import DAG
from airflow.models.dagrun import DagRun
from airflow.models.param import Param
from airflow.models.xcom import XCom
from airflow.operators.python import BranchPythonOperator
from airflow.utils.trigger_rule import TriggerRule

from shardlake_airflow.operators import ShardlakeJobOperator
from shardlake_airflow.schedule import should_retrain

log = logging.getLogger(__name__)

# Must match libs/shardlake/session.py (tests/test_airflow_dags.py checks it).
DELTA_VERSION = "3.3.3"
DELTA_ARTIFACTS = ("delta-spark_2.12", "delta-storage")
# OpenLineage's Spark listener, as libs/shardlake/session.py OPENLINEAGE_ARTIFACT (scripts/fetch_jars.sh caches it).
OPENLINEAGE_JAR = "openlineage-spark_2.12-1.53.0.jar"
# jobs/promote.py exits with this code when the gate refuses the model.
GATE_REFUSED_EXIT_CODE = 3
# What one task hands the next (each job's --result-file, the task's XCom return_value).
INGESTED_VERSION = "{{ ti.xcom_pull(task_ids='ingest')['table_version'] }}"
CANDIDATE_ARG = "--model-version={{ params.model_version or ti.xcom_pull(task_ids='train')['model_version'] }}"
# The model the interval is scored with: the run's param, else the one the gate left in production
# (when training ran), else, with --reuse-interval, the one an earlier run of the interval used, else
# production. An empty argument is dropped by the operator.
SERVING_MODEL_ARG = (
    "{% set gate = ti.xcom_pull(task_ids='gate') %}"
    "{% set model = params.model_version or (gate['serving_version'] if gate else None) %}"
    "{{ '--model-version=' ~ model if model else '' }}")

SETTINGS = {
    "conf", "overrides", "schedule", "start_date", "catchup", "retries", "retry_delay_minutes",
    "execution_timeout_minutes", "owner", "spark_conn_id", "driver_memory", "spark_conf", "spark_env",
    "description", "retrain_every_days", "retrain_on_drift",
}


def choose_branch(dag_run, dag, logical_date, params, on_drift: bool, **_) -> str:
    """The retrain task: 'train' or straight to 'infer' (``schedule.should_retrain``), from the interval,
    the DAG's start and the previous run's inference result; logs why."""
    previous = DagRun.get_previous_dagrun(dag_run)  # a static method: the run is its argument
    result = (XCom.get_one(key="return_value", dag_id=dag.dag_id, task_id="infer", run_id=previous.run_id)
              if previous is not None else None)
    retrain, reason = should_retrain(logical_date.date(), dag.start_date.date(), int(params["retrain_every_days"]),
                                     result, previous is None, on_drift, params.get("retrain"))
    log.info("%s: %s", "retraining" if retrain else "scoring with the production model", reason)
    return "train" if retrain else "infer"


@dataclass(frozen=True)
class Project:
    """Where the project lives for the workers: its checkout, its venv and the Delta jar cache."""

    home: Path
    venv: Path
    jars: Path

    @classmethod
    def from_env(cls, default_home: Path) -> "Project":
        """SHARDLAKE_HOME / SHARDLAKE_VENV / SHARDLAKE_JARS, with the defaults of the module docstring."""
        home = Path(os.environ.get("SHARDLAKE_HOME") or default_home).resolve()
        venv = Path(os.environ.get("SHARDLAKE_VENV") or home / ".venv")
        jars = Path(os.environ.get("SHARDLAKE_JARS") or Path.home() / ".cache" / "shardlake" / "jars")
        return cls(home, venv, jars)

    @property
    def spark_submit(self) -> str:
        return str(self.venv / "bin" / "spark-submit")

    @property
    def delta_jars(self) -> str:
        """--jars for spark-submit. Needed: under spark-submit the driver JVM is already running when
        the job's session builder sets spark.jars, so without --jars Delta's classes are missing. The same
        holds for OpenLineage's listener (jobs with lineage on): added when the cache has it."""
        jars = [self.jars / f"{name}-{DELTA_VERSION}.jar" for name in DELTA_ARTIFACTS]
        listener = self.jars / OPENLINEAGE_JAR
        return ",".join(str(j) for j in [*jars, *([listener] if listener.is_file() else [])])

    def spark_env(self, extra: Mapping[str, str]) -> dict[str, str]:
        """spark-submit's environment: the project venv's python for the launcher, driver and workers
        (without it the launcher finds no pyspark and exits with code 127)."""
        python = str(self.venv / "bin" / "python")
        return {"PYSPARK_PYTHON": python, "PYSPARK_DRIVER_PYTHON": python, **extra}


def load_pipelines(path: Path) -> dict[str, dict[str, Any]]:
    """Settings per dataset: its entry over `defaults`. Unknown keys are refused (typos)."""
    raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    defaults = raw.get("defaults") or {}
    pipelines = {name: {**defaults, **(entry or {})} for name, entry in (raw.get("pipelines") or {}).items()}
    for name, settings in pipelines.items():
        unknown = sorted(set(settings) - SETTINGS)
        if unknown:
            raise ValueError(f"{path}: pipeline {name!r}: unknown setting(s) {unknown}; known: {sorted(SETTINGS)}")
    return pipelines


def dag_params(dataset: str, settings: Mapping[str, Any]) -> dict[str, Param]:
    """What a run can change when triggered (and what tests point at a temporary lake)."""
    return {
        "dataset": Param(dataset, type="string", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
                         description="dataset name: conf/datasets/<name>.yaml"),
        "conf": Param(list(settings["conf"]), type="array", items={"type": "string"}, minItems=1,
                      description="YAML config files, later wins; relative to SHARDLAKE_HOME or absolute"),
        "overrides": Param(list(settings["overrides"]), type="array", items={"type": "string", "pattern": "^[^=]+="},
                           description="key=value config overrides, e.g. lake.root=/data/lake train.epochs=2"),
        "model_version": Param(None, type=["null", "string"],
                               description="gate and infer use this model instead of the one this run trains"),
        "retrain": Param(None, type=["null", "boolean"],
                         description="true/false: train (or not) in this run, whatever the schedule says"),
        "retrain_every_days": Param(int(settings["retrain_every_days"]), type="integer", minimum=1,
                                    description="days between scheduled retrainings, counted from start_date"),
    }


def build_dag(dataset: str, settings: Mapping[str, Any], project: Project) -> DAG:
    """The pipeline DAG of one dataset. Every task works on the run's data interval, never the clock.

    ingest: the interval's landing data (a source path template such as landing/{ds}/*.csv); hands
    on the clean-table version it produced (recorded in ingest_runs; a re-run hands on the same).
    retrain: a branch. Training runs on its own schedule (retrain_every_days from start_date), on
    the DAG's first run, or when the previous interval's inference flagged drift (retrain_on_drift);
    otherwise the run goes straight to infer.
    train: on exactly the version ingest produced. gate: promote the model train registered only if,
    on the same held-out test rows, it is at least as good as the production model
    (train.promote_margin) and reaches train.promote_threshold; a refusal is an answer (the task
    succeeds, production stays); a candidate decided before is not judged again.
    infer: scores the version ingest produced with the model the gate left in production (or, when
    training did not run, the production model, or on a re-run the model the interval used before),
    stamps predictions with the run's logical date and writes one summary row per model, interval
    and scope. Clearing and re-running an interval reproduces its predictions and summary.
    """
    default_args = {
        "owner": settings["owner"],
        "retries": int(settings["retries"]),
        "retry_delay": timedelta(minutes=float(settings["retry_delay_minutes"])),
        "execution_timeout": timedelta(minutes=float(settings["execution_timeout_minutes"])),
    }
    submit = {
        "home": str(project.home),
        "conn_id": settings["spark_conn_id"],
        "spark_binary": project.spark_submit,
        "jars": project.delta_jars,
        "driver_memory": settings["driver_memory"],
        "conf": dict(settings["spark_conf"]),
        "env_vars": project.spark_env(settings["spark_env"]),
        # OpenLineage provider: spark.openlineage.parent* name this task's run, so the job's events hang under it.
        "openlineage_inject_parent_job_info": True,
    }
    with DAG(
        dag_id=f"shardlake_{dataset}",
        description=settings.get("description") or f"shardlake pipeline of {dataset}",
        schedule=settings["schedule"],
        start_date=pendulum.parse(str(settings["start_date"]), tz="UTC"),
        catchup=bool(settings["catchup"]),
        max_active_runs=1,  # runs of a dataset write the same Delta tables
        default_args=default_args,
        params=dag_params(dataset, settings),
        tags=["shardlake", dataset],
        doc_md=build_dag.__doc__,
    ) as dag:
        ingest = ShardlakeJobOperator(
            task_id="ingest", job="ingest", job_args=[
                "--run-id", "airflow-{{ params.dataset }}-{{ ds }}", "--logical-date", "{{ ds }}",
                "--interval-end", "{{ data_interval_end | ds }}"], **submit)
        retrain = BranchPythonOperator(task_id="retrain", python_callable=choose_branch,
                                       op_kwargs={"on_drift": bool(settings["retrain_on_drift"])})
        train = ShardlakeJobOperator(task_id="train", job="train",
                                     job_args=["--table-version", INGESTED_VERSION, "--json"], **submit)
        gate = ShardlakeJobOperator(task_id="gate", job="promote", job_args=[CANDIDATE_ARG, "--json"],
                                    refused_exit_code=GATE_REFUSED_EXIT_CODE, **submit)
        infer = ShardlakeJobOperator(
            task_id="infer", job="infer", trigger_rule=TriggerRule.NONE_FAILED_MIN_ONE_SUCCESS, job_args=[
                "--logical-date", "{{ ds }}", "--table-version", INGESTED_VERSION, "--reuse-interval",
                SERVING_MODEL_ARG], **submit)
        ingest >> retrain >> [train, infer]
        train >> gate >> infer
    return dag


def build_dags(config_path: Path, default_home: Path) -> dict[str, DAG]:
    """Every pipeline DAG of ``config_path``, by DAG id (for the DAG file's globals)."""
    project = Project.from_env(default_home)
    dags = (build_dag(dataset, settings, project) for dataset, settings in load_pipelines(config_path).items())
    return {dag.dag_id: dag for dag in dags}
