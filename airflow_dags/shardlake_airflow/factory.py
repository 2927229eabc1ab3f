"""One pipeline DAG per dataset of pipelines.yaml: ingest -> train -> gate -> infer.

Each task spark-submits a job of the project (jobs/<job>.py) with the project venv's spark-submit
and the Delta jars. Parsing a DAG reads one small YAML file and the environment, nothing else: no
database, no Variables, no Spark.

Where the project is, taken from the environment of the process that parses the DAGs:
  SHARDLAKE_HOME   the checkout with jobs/ and conf/ (default: the folder above the DAG folder)
  SHARDLAKE_VENV   the project venv holding spark-submit (default: $SHARDLAKE_HOME/.venv)
  SHARDLAKE_JARS   the Delta jar cache (default: ~/.cache/shardlake/jars, as libs/shardlake/session.py)
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pendulum
import yaml
from airflow import DAG
from airflow.models.param import Param

from shardlake_airflow.operators import ShardlakeJobOperator

# Must match libs/shardlake/session.py (tests/test_airflow_dags.py checks it).
DELTA_VERSION = "3.3.3"
DELTA_ARTIFACTS = ("delta-spark_2.12", "delta-storage")
# jobs/promote.py exits with this code when the gate refuses the model.
GATE_REFUSED_EXIT_CODE = 3
# An option only when the run names a model version; an empty argument is dropped by the operator.
MODEL_VERSION_ARG = "{{ '--model-version=' ~ params.model_version if params.model_version else '' }}"

SETTINGS = {
    "conf", "overrides", "schedule", "start_date", "catchup", "retries", "retry_delay_minutes",
    "execution_timeout_minutes", "owner", "spark_conn_id", "driver_memory", "spark_conf", "spark_env",
    "description",
}


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
        the job's session builder sets spark.jars, so without --jars Delta's classes are missing."""
        return ",".join(str(self.jars / f"{name}-{DELTA_VERSION}.jar") for name in DELTA_ARTIFACTS)

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
    }


def build_dag(dataset: str, settings: Mapping[str, Any], project: Project) -> DAG:
    """The pipeline DAG of one dataset.

    gate: promote the model train just registered only if, on the same held-out test rows, it is at
    least as good as the production model (train.promote_margin) and reaches
    train.promote_threshold. Otherwise the gate task fails (not retried) and infer does not run, so
    no predictions come from a model that did not pass; the previous production model stays.
    infer: scores with the production model and stamps predictions with the run's logical date.
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
            task_id="ingest", job="ingest", job_args=["--run-id", "airflow-{{ params.dataset }}-{{ ds }}"], **submit)
        train = ShardlakeJobOperator(task_id="train", job="train", job_args=["--json"], **submit)
        gate = ShardlakeJobOperator(task_id="gate", job="promote", job_args=[MODEL_VERSION_ARG, "--json"],
                                    refused_exit_code=GATE_REFUSED_EXIT_CODE, **submit)
        infer = ShardlakeJobOperator(
            task_id="infer", job="infer", job_args=["--logical-date", "{{ ds }}", MODEL_VERSION_ARG], **submit)
        ingest >> train >> gate >> infer
    return dag


def build_dags(config_path: Path, default_home: Path) -> dict[str, DAG]:
    """Every pipeline DAG of ``config_path``, by DAG id (for the DAG file's globals)."""
    project = Project.from_env(default_home)
    dags = (build_dag(dataset, settings, project) for dataset, settings in load_pipelines(config_path).items())
    return {dag.dag_id: dag for dag in dags}
