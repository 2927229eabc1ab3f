"""jobs/common.py: what a job's session needs before Spark starts."""
from __future__ import annotations

from jobs import common
from shardlake.config import load_config

from ingest_helpers import REPO, toy_config


def test_the_default_flights_job_does_not_carry_the_s3_connector():
    assert common.needs_object_store(load_config([REPO / "conf" / "base.yaml"])) is False


def test_a_join_source_on_s3_alone_brings_the_s3_connector(tmp_path):
    config = toy_config(tmp_path, tmp_path / "orders.csv", tmp_path / "lake")
    joined = config.model_copy(update={"dataset": config.dataset.model_copy(update={"joins": [
        j.model_copy(update={"source": j.source.model_copy(update={"path": "s3a://ref/customers.csv"})})
        for j in config.dataset.joins]})})
    assert common.needs_object_store(joined) is True
