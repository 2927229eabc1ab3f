"""A run that fails after committing undoes its own commits, and only its own.

The failure is injected into shardlake's own write steps (after the real clean commit);
Spark and Delta run for real.
"""
from __future__ import annotations

import pytest
from pyspark.sql import functions as F
from pyspark.testing import assertDataFrameEqual

from shardlake import delta_io
from shardlake.lake import Lake
from shardlake.stages import ingest_write
from ingest_helpers import HEADER, ingest, table, toy_config, write_csv

FIRST = ["1,c1,10.0,2,DE,AB1,1", "4,,5.0,1,DE,GH4,1"]
SECOND = ["2,c2,20.5,1,FR,CD2,1", "5,c2,-1,1,DE,IJ5,1"]  # one new clean row, one new quarantined row


class InjectedFailure(RuntimeError):
    pass


@pytest.fixture
def lake(spark, tmp_path):
    """A toy lake after one good run, and the config of a second batch."""
    config = toy_config(tmp_path / "a", write_csv(tmp_path / "a" / "orders.csv", HEADER, FIRST), tmp_path / "lake")
    ingest(spark, config, "run-1")
    second = toy_config(tmp_path / "b", write_csv(tmp_path / "b" / "orders.csv", HEADER, SECOND), tmp_path / "lake")
    paths = {n: str(Lake.at(config.lake.root).table("toy", n)) for n in ("clean", "quarantine")}
    return {"config": second, "paths": paths,
            "before": {n: delta_io.latest_version(spark, p) for n, p in paths.items()}}


def test_a_failure_after_the_clean_commit_leaves_both_tables_as_they_were(spark, lake, monkeypatch):
    def failing_quarantine_write(*args, **kwargs):
        raise InjectedFailure("quarantine write failed")

    monkeypatch.setattr(ingest_write, "write_quarantine", failing_quarantine_write)
    with pytest.raises(InjectedFailure):
        ingest(spark, lake["config"], "run-2")
    for name, version in lake["before"].items():
        assertDataFrameEqual(table(spark, lake["config"], name), table(spark, lake["config"], name, version))
    assert delta_io.latest_version(spark, lake["paths"]["clean"]) == lake["before"]["clean"] + 2  # MERGE, RESTORE


def test_undo_keeps_a_concurrent_writers_commit_made_before_the_runs_own(spark, lake, monkeypatch):
    real_write_clean = ingest_write.write_clean
    clean_path = lake["paths"]["clean"]
    current = table(spark, lake["config"], "clean").withColumn("customer", F.lit("theirs"))
    theirs = spark.createDataFrame(current.collect(), current.schema)  # fixed rows, not a view of the table

    def other_writer_then_fail(spark_, path, *args, **kwargs):
        with delta_io.commit_metadata(spark, {"run_id": "another-writer"}):
            delta_io.merge_by_key(spark, clean_path, theirs, ["order_id"])
        real_write_clean(spark_, path, *args, **kwargs)  # this run's own clean commit, on top of theirs
        raise InjectedFailure("failed after both commits")

    monkeypatch.setattr(ingest_write, "write_clean", other_writer_then_fail)
    with pytest.raises(InjectedFailure):
        ingest(spark, lake["config"], "run-2")
    assertDataFrameEqual(table(spark, lake["config"], "clean"), theirs)


def test_a_run_commit_with_another_writers_commit_on_top_is_left_and_the_error_says_so(spark, lake, monkeypatch):
    real_write_clean = ingest_write.write_clean
    clean_path = lake["paths"]["clean"]

    def fail_after_another_writer(spark_, path, *args, **kwargs):
        real_write_clean(spark_, path, *args, **kwargs)
        current = table(spark, lake["config"], "clean").where(F.col("order_id") == 1).withColumn("qty", F.lit(7))
        theirs = spark.createDataFrame(current.collect(), current.schema)
        with delta_io.commit_metadata(spark, {"run_id": "another-writer"}):
            delta_io.merge_by_key(spark, clean_path, theirs, ["order_id"])
        raise InjectedFailure("failed after another writer committed on top")

    monkeypatch.setattr(ingest_write, "write_clean", fail_after_another_writer)
    with pytest.raises(InjectedFailure) as failure:
        ingest(spark, lake["config"], "run-2")
    assert any("later commit(s) by another writer followed it, so it was not undone" in note
               for note in failure.value.__notes__)
