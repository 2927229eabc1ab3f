"""jobs/common.py: what a job's session needs before Spark starts."""
from __future__ import annotations

from jobs import common
from shardlake.config import load_config

from ingest_helpers import REPO, toy_config


def test_the_default_flights_job_carries_no_object_store_connector():
    assert common.connectors(load_config([REPO / "conf" / "base.yaml"])) == []


def test_a_join_source_on_s3_alone_brings_the_s3_connector(tmp_path):
    config = toy_config(tmp_path, tmp_path / "orders.csv", tmp_path / "lake")
    joined = config.model_copy(update={"dataset": config.dataset.model_copy(update={"joins": [
        j.model_copy(update={"source": j.source.model_copy(update={"path": "s3a://ref/customers.csv"})})
        for j in config.dataset.joins]})})
    assert common.connectors(joined) == ["s3a"]


def test_a_lake_on_gcs_with_a_local_source_brings_the_gcs_connector_alone(tmp_path):
    config = toy_config(tmp_path, tmp_path / "orders.csv", "gs://bucket/lake")
    assert common.connectors(config) == ["gs"]


def test_an_hdfs_lake_needs_no_connector_beyond_sparks_own_hadoop_client(tmp_path):
    assert common.connectors(toy_config(tmp_path, tmp_path / "orders.csv", "hdfs://127.0.0.1:8020/lake")) == []
