"""Airflow DAGs of the shardlake pipeline: one per dataset in pipelines.yaml (DAG id shardlake_<dataset>).

ingest -> retrain? (own schedule, or drift) -> train -> gate (promote if at least as good as production on
the same test rows) -> infer, each job task a spark-submit of the project's job, all on the run's data
interval. Parsing reads pipelines.yaml only; the jobs and their Spark, torch and Delta dependencies run
in the project venv, not here. See shardlake_airflow/factory.py.
"""
from pathlib import Path

from shardlake_airflow.factory import build_dags

_HERE = Path(__file__).resolve().parent

globals().update(build_dags(_HERE / "pipelines.yaml", default_home=_HERE.parent))
