"""The ingest's run log (ingest_write.record_run): one row per run id, written without reading the others."""
from __future__ import annotations

from delta.tables import DeltaTable
from pyspark.testing import assertDataFrameEqual

from shardlake import delta_io
from shardlake.stages.ingest_write import record_run


def report(run_id: str, rows_read: int) -> dict:
    return {"run_id": run_id, "dataset": "toy", "table_version": 1, "quarantine_version": 1,
            "rows_read": rows_read, "clean_rows": rows_read, "quarantined": 0, "duplicates_removed": 0,
            "rule_counts": {}, "shard_counts": {0: rows_read}, "skew_ratio": 1.0}


def test_a_new_runs_record_is_a_blind_append_that_reads_no_earlier_record(spark, lake_root):
    # A MERGE by run id read every earlier run's file: over years of nightly runs, recording one run
    # would cost the history, not the run.
    path = str(lake_root / "ingest_runs")
    record_run(spark, path, report("day-1", 10))
    record_run(spark, path, report("day-2", 20))
    history = DeltaTable.forPath(spark, path).history().orderBy("version").select("operation", "isBlindAppend")
    assert [tuple(r) for r in history.collect()][1:] == [("WRITE", True), ("WRITE", True)]


def test_recording_a_run_id_again_replaces_its_record(spark, lake_root):
    path = str(lake_root / "ingest_runs")
    record_run(spark, path, report("day-1", 10))
    record_run(spark, path, report("day-2", 20))
    record_run(spark, path, report("day-1", 11))
    recorded = delta_io.read_version(spark, path).select("run_id", "rows_read")
    assertDataFrameEqual(recorded, spark.createDataFrame([("day-1", 11), ("day-2", 20)], "run_id string, rows_read long"))
