"""Delta helpers the ingest relies on: one-commit creation with constraints, schema checks, change detection."""
from __future__ import annotations

import json

import pytest
from delta.tables import DeltaTable
from pyspark.sql import types as T
from pyspark.testing import assertDataFrameEqual

from shardlake import delta_io, delta_log

SCHEMA = T.StructType([T.StructField("id", T.IntegerType()), T.StructField("v", T.DoubleType()),
                       T.StructField("shard", T.IntegerType())])


def versions(spark, path: str) -> list[tuple[int, str]]:
    return [(r["version"], r["operation"]) for r in
            spark.sql(f"DESCRIBE HISTORY delta.`{path}`").orderBy("version").collect()]


def test_a_new_table_gets_all_its_constraints_in_one_commit(spark, lake_root):
    path = str(lake_root / "t")
    created = delta_io.ensure_table(spark, path, SCHEMA, ["shard"], {"v_pos": "v >= 0", "id_set": "id IS NOT NULL"})
    assert created
    assert versions(spark, path) == [(0, "CREATE TABLE")]
    assert delta_io.table_constraints(spark, path) == {"v_pos": "v >= 0", "id_set": "id IS NOT NULL"}


def test_changed_constraints_are_brought_in_line_and_unchanged_ones_cost_no_commit(spark, lake_root):
    path = str(lake_root / "t")
    delta_io.ensure_table(spark, path, SCHEMA, ["shard"], {"v_pos": "v >= 0", "old": "id > 0"})
    delta_io.ensure_table(spark, path, SCHEMA, ["shard"], {"v_pos": "v >= 0", "new": "id < 100"})
    assert delta_io.table_constraints(spark, path) == {"v_pos": "v >= 0", "new": "id < 100"}
    assert [op for _, op in versions(spark, path)] == ["CREATE TABLE", "DROP CONSTRAINT", "ADD CONSTRAINT"]


def test_a_different_schema_is_refused_with_every_difference_named(spark, lake_root):
    path = str(lake_root / "t")
    delta_io.ensure_table(spark, path, SCHEMA)
    other = T.StructType([T.StructField("id", T.LongType()), T.StructField("shard", T.IntegerType()),
                          T.StructField("w", T.StringType())])
    with pytest.raises(delta_io.SchemaChangeError) as caught:
        delta_io.ensure_table(spark, path, other)
    assert str(caught.value) == (f"{path}: incoming schema differs from the table: missing column v; new column w "
                                 "(string); column id: int -> bigint. Set allow_schema_evolution: true in the "
                                 "dataset config to accept new columns.")


def test_evolution_adds_new_columns_only(spark, lake_root):
    path = str(lake_root / "t")
    delta_io.ensure_table(spark, path, SCHEMA)
    wider = T.StructType([*SCHEMA.fields, T.StructField("w", T.StringType())])
    delta_io.ensure_table(spark, path, wider, allow_evolution=True)
    assert delta_io.read_version(spark, path).schema == wider
    narrower = T.StructType(SCHEMA.fields[:2])
    with pytest.raises(delta_io.SchemaChangeError, match="only added columns can evolve"):
        delta_io.ensure_table(spark, path, narrower, allow_evolution=True)


def test_merge_by_key_updates_changed_rows_and_inserts_new_keys(spark, lake_root):
    path = str(lake_root / "t")
    schema = "id int, h long, v double"
    spark.createDataFrame([(1, 10, 1.0), (2, 20, 2.0)], schema).write.format("delta").save(path)
    incoming = spark.createDataFrame([(2, 21, 2.5), (3, 30, 3.0)], schema)
    version = delta_io.merge_by_key(spark, path, incoming, ["id"], changed_when="t.h <> s.h")
    assertDataFrameEqual(delta_io.read_version(spark, path, version),
                         spark.createDataFrame([(1, 10, 1.0), (2, 21, 2.5), (3, 30, 3.0)], schema))
    assert delta_io.commit_counts(spark, path, version) == {"inserted": 1, "updated": 1, "deleted": 0}


def test_a_merge_that_writes_nothing_returns_none_not_another_writers_version(spark, lake_root):
    path = str(lake_root / "t")
    schema = "id int, h long, v double"
    spark.createDataFrame([(1, 10, 1.0)], schema).write.format("delta").save(path)
    with delta_io.commit_metadata(spark, {"run_id": "another-writer"}):
        delta_io.merge_by_key(spark, path, spark.createDataFrame([(2, 20, 2.0)], schema), ["id"])
    already_there = spark.createDataFrame([(1, 10, 1.0), (2, 20, 2.0)], schema)
    with delta_io.commit_metadata(spark, {"run_id": "mine"}):
        assert delta_io.merge_by_key(spark, path, already_there, ["id"], update=False) is None
    assert delta_io.latest_version(spark, path) == 1


def test_row_count_of_a_version_comes_from_the_log(spark, lake_root):
    path = str(lake_root / "t")
    spark.createDataFrame([(i, float(i), i % 3) for i in range(7)], SCHEMA).write.format("delta").save(path)
    spark.createDataFrame([(9, 9.0, 0)], SCHEMA).write.format("delta").mode("append").save(path)
    assert (delta_log.row_count(path, 0), delta_log.row_count(path, 1)) == (7, 8)


def test_a_conflict_is_retried_and_any_other_error_is_not(spark):
    from delta.exceptions import ConcurrentAppendException

    calls = []

    def conflicting_once():
        calls.append(1)
        if len(calls) == 1:
            raise ConcurrentAppendException("Files were added by a concurrent update", "(no JVM stack)")
        return "done"

    assert delta_io.retry_on_conflict(conflicting_once, "t", pause_s=0) == "done"
    assert len(calls) == 2
    with pytest.raises(ValueError, match="concurrent"):
        delta_io.retry_on_conflict(lambda: (_ for _ in ()).throw(ValueError("not a concurrent thing")), "t",
                                   pause_s=0)


def test_rows_per_partition_come_from_the_log(spark, lake_root):
    path = str(lake_root / "t")
    df = spark.createDataFrame([(i, float(i), i % 3) for i in range(10)], SCHEMA)
    df.write.format("delta").partitionBy("shard").save(path)
    assert delta_io.partition_row_counts(spark, path, 0, "shard") == {"0": 4, "1": 3, "2": 3}


def test_optimize_compacts_without_changing_content(spark, lake_root):
    path = str(lake_root / "t")
    for i in range(3):
        spark.createDataFrame([(i, 1.0, 0)], SCHEMA).write.format("delta").mode("append").save(path)
    before = delta_io.read_version(spark, path)
    version = delta_io.optimize(spark, path)
    assert versions(spark, path)[-1] == (version, "OPTIMIZE")
    assertDataFrameEqual(delta_io.read_version(spark, path, version), before)
    assert len(delta_log.snapshot_files(path, version)) == 1


def test_optimize_with_cluster_columns_orders_the_files_by_them(spark, lake_root):
    path = str(lake_root / "t")
    for i in (2, 0, 1):
        spark.createDataFrame([(i, 1.0, 0)], SCHEMA).write.format("delta").mode("append").save(path)
    before = delta_io.read_version(spark, path)
    version = delta_io.optimize(spark, path, zorder_by=["id"])
    operation = DeltaTable.forPath(spark, path).history(1).select("operationParameters").first()[0]
    assert (version, json.loads(operation["zOrderBy"])) == (3, ["id"])
    assertDataFrameEqual(delta_io.read_version(spark, path, version), before)


def test_session_settings_are_put_back_after_the_block(spark):
    key = "spark.databricks.delta.commitInfo.userMetadata"
    with delta_io.commit_metadata(spark, {"run_id": "r1"}):
        assert spark.conf.get(key) == '{"run_id": "r1"}'
    assert spark.conf.get(key, None) is None


def _empty_table(spark, path: str, schema: str) -> int:
    delta_io.ensure_table(spark, path, spark.createDataFrame([], schema).schema)
    return delta_io.latest_version(spark, path)


def test_a_first_load_appends_into_the_empty_table_and_delta_records_its_rows(spark, lake_root):
    path, schema = str(lake_root / "t"), "id int, v double"
    empty_at = _empty_table(spark, path, schema)
    rows = spark.createDataFrame([(1, 1.0), (2, 2.0)], schema)
    with delta_io.commit_metadata(spark, {"run_id": "first"}):
        version = delta_io.first_load(spark, path, rows, empty_at)
    assert DeltaTable.forPath(spark, path).history(1).select("operation").first()[0] == "WRITE"
    assert delta_io.commit_counts(spark, path, version) == {"inserted": 2, "updated": 0, "deleted": 0}
    assertDataFrameEqual(delta_io.read_version(spark, path, version), rows)


def test_a_first_load_after_another_first_load_of_the_same_empty_table_is_refused_as_a_conflict(spark, lake_root):
    # Both writers found the table empty at the same version; the later one must not append its
    # rows on top of the other's (with equal keys, every row would be there twice).
    path, schema = str(lake_root / "t"), "id int, v double"
    empty_at = _empty_table(spark, path, schema)
    theirs = spark.createDataFrame([(1, 1.0)], schema)
    with delta_io.commit_metadata(spark, {"run_id": "theirs"}):
        delta_io.first_load(spark, path, theirs, empty_at)
    with delta_io.commit_metadata(spark, {"run_id": "mine"}), pytest.raises(delta_io.FirstLoadTaken):
        delta_io.first_load(spark, path, spark.createDataFrame([(1, 1.5)], schema), empty_at)
    assertDataFrameEqual(delta_io.read_version(spark, path), theirs)


def test_a_refused_first_load_is_retried_like_any_commit_conflict(spark):
    attempts = []

    def action():
        attempts.append(1)
        if len(attempts) == 1:
            raise delta_io.FirstLoadTaken("t: another writer's first load committed first")
        return "classified against the other writer's rows"

    assert delta_io.retry_on_conflict(action, "t", pause_s=0) == "classified against the other writer's rows"
    assert len(attempts) == 2


def test_a_table_emptied_after_its_first_load_takes_a_first_load_again(spark, lake_root):
    path, schema = str(lake_root / "t"), "id int, v double"
    with delta_io.commit_metadata(spark, {"run_id": "first"}):
        delta_io.first_load(spark, path, spark.createDataFrame([(1, 1.0)], schema), _empty_table(spark, path, schema))
    spark.sql(f"DELETE FROM delta.`{path}`")
    again = spark.createDataFrame([(2, 2.0)], schema)
    with delta_io.commit_metadata(spark, {"run_id": "again"}):
        delta_io.first_load(spark, path, again, delta_io.latest_version(spark, path))
    assertDataFrameEqual(delta_io.read_version(spark, path), again)


def test_a_merge_of_a_stable_source_gives_the_same_table_and_leaves_the_session_as_it_was(spark, lake_root):
    path, schema = str(lake_root / "t"), "id int, v double"
    spark.createDataFrame([(1, 1.0), (2, 2.0)], schema).write.format("delta").save(path)
    staged = str(lake_root / "staged")
    spark.createDataFrame([(2, 2.5), (3, 3.0)], schema).write.parquet(staged)
    version = delta_io.merge_by_key(spark, path, spark.read.parquet(staged), ["id"], stable_source=True)
    assertDataFrameEqual(delta_io.read_version(spark, path, version),
                         spark.createDataFrame([(1, 1.0), (2, 2.5), (3, 3.0)], schema))
    assert spark.conf.get(delta_io.MATERIALIZE_SOURCE, None) is None


def test_the_log_lists_the_commits_after_a_version_newest_first(spark, lake_root):
    path = str(lake_root / "t")
    for i in range(3):
        spark.createDataFrame([(i, float(i), 0)], SCHEMA).write.format("delta").mode("append").save(path)
    assert [commit["version"] for commit in delta_log.commits_after(path, 0)] == [2, 1]
    assert delta_log.commits_after(path, 2) == []
    assert delta_log.commit_info(path, 1)["operationMetrics"]["numOutputRows"] == "1"


def test_rows_with_a_value_are_read_from_the_latest_version_only(spark, lake_root):
    path = str(lake_root / "t")
    spark.createDataFrame([(1, 1.0, 0), (2, 2.0, 1)], SCHEMA).write.format("delta").save(path)
    # A newer version removes the file holding id 1 and adds id 1 again with another value.
    spark.createDataFrame([(1, 5.0, 0), (2, 2.0, 1)], SCHEMA).write.format("delta").mode("overwrite").save(path)
    assert delta_log.rows_where(path, "id", 1, ["id", "v"]) == [{"id": 1, "v": 5.0}]
    assert delta_log.rows_where(path, "id", 7, ["v"]) == []


def test_a_writers_own_commit_is_found_by_its_metadata_not_as_the_latest(spark, lake_root):
    path = str(lake_root / "t")
    spark.createDataFrame([(0, 0.0, 0)], SCHEMA).write.format("delta").save(path)
    for run in ("mine", "theirs"):
        with delta_io.commit_metadata(spark, {"run_id": run}):
            spark.createDataFrame([(1, 1.0, 0)], SCHEMA).write.format("delta").mode("append").save(path)
    with delta_io.commit_metadata(spark, {"run_id": "mine"}):
        assert (delta_io.own_commit(spark, path, 0), delta_io.latest_version(spark, path)) == (1, 2)


def test_the_latest_version_of_a_folder_without_a_table_is_refused(spark, lake_root):
    from pyspark.errors import AnalysisException

    (lake_root / "not-a-table").mkdir(parents=True)
    with pytest.raises(AnalysisException):
        delta_io.latest_version(spark, str(lake_root / "not-a-table"))


def test_an_append_once_commits_its_rows_the_first_time_and_nothing_under_the_same_id_after(spark, lake_root):
    path, schema = str(lake_root / "t"), "id int, v double"
    _empty_table(spark, path, schema)
    rows = spark.createDataFrame([(1, 1.0)], schema)
    first = delta_io.append_once(spark, path, rows, "run-a")
    again = delta_io.append_once(spark, path, spark.createDataFrame([(1, 2.0)], schema), "run-a")
    assert (first, again) == (delta_io.latest_version(spark, path), None)
    assertDataFrameEqual(delta_io.read_version(spark, path), rows)


def test_an_append_once_under_another_id_commits_as_a_blind_append(spark, lake_root):
    path, schema = str(lake_root / "t"), "id int, v double"
    _empty_table(spark, path, schema)
    delta_io.append_once(spark, path, spark.createDataFrame([(1, 1.0)], schema), "run-a")
    version = delta_io.append_once(spark, path, spark.createDataFrame([(2, 2.0)], schema), "run-b")
    latest = DeltaTable.forPath(spark, path).history(1).select("version", "operation", "isBlindAppend").first()
    assert tuple(latest) == (version, "WRITE", True)
    assertDataFrameEqual(delta_io.read_version(spark, path),
                         spark.createDataFrame([(1, 1.0), (2, 2.0)], schema))
