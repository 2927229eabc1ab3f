"""Airflow side of shardlake: the DAG factory and the operator that spark-submits a shardlake job.

Runs in the Airflow venv (.venv-airflow), which does not have the shardlake package: nothing here
imports shardlake, pyspark or torch. The jobs run in the project venv through its spark-submit.
"""
