"""Runs whose input, layout or neighbours change: nothing lost, nothing duplicated, the right run blamed.

Each test runs the real ingest stage on the toy dataset (tests/ingest_helpers.py) against a real
Delta lake, compares the tables with expected rows written out independently, and adds a row to
the reliability report (make reliability) with the rows lost and duplicated it measured.
"""
from __future__ import annotations

import pytest
from pyspark.sql import functions as F
from pyspark.testing import assertDataFrameEqual

from shardlake import delta_io
from shardlake.lake import Lake
from shardlake.layout import LayoutChangeError
from shardlake.intervals import DataInterval
from shardlake.stages.ingest import IngestError, rebuild_layout, run_ingest
from shardlake.transforms import clean as C

from ingest_helpers import HEADER, LINES, REPO, ingest, table, toy_config, write_csv

pytestmark = pytest.mark.reliability
FIRST_HALF, SECOND_HALF = [line for line, _ in LINES[:8]], [line for line, _ in LINES[8:]]


def duplicated_keys(spark, config) -> int:
    """Rows beyond the first of each key in the clean table (0 when every key is stored once)."""
    clean = table(spark, config, "clean")
    return clean.count() - clean.select("order_id").distinct().count()


def history(spark, config, name: str) -> list[str]:
    path = Lake.at(config.lake.root).table("toy", name)
    return [r["operation"] for r in spark.sql(f"DESCRIBE HISTORY delta.`{path}`").orderBy("version").collect()]


def test_a_narrower_glob_keeps_the_quarantine_of_the_earlier_run(spark, tmp_path, reliability):
    """Issue 10, seen 1: the second run inserted nothing, took the first run's commit for its own and undid it."""
    write_csv(tmp_path / "in" / "part-1.csv", HEADER, FIRST_HALF)
    write_csv(tmp_path / "in" / "part-2.csv", HEADER, SECOND_HALF)
    both = toy_config(tmp_path, tmp_path / "in" / "part-*.csv", tmp_path / "lake")
    ingest(spark, both, "both-files")
    before = {n: table(spark, both, n).collect() for n in ("clean", "quarantine")}
    first_only = toy_config(tmp_path, tmp_path / "in" / "part-1.csv", tmp_path / "lake")
    report = ingest(spark, first_only, "first-file-only")
    after = {n: table(spark, both, n).collect() for n in ("clean", "quarantine")}
    lost = sum(len(set(map(repr, before[n])) - set(map(repr, after[n]))) for n in before)
    reliability.record("a narrower glob re-ingests part of an earlier input", "succeeded, committed nothing",
                       lost, duplicated_keys(spark, both))
    assert after == before
    assert (report.rows_merged, report.quarantine_inserted) == (0, 0)
    assert "RESTORE" not in history(spark, both, "quarantine")


def shard_change(spark, tmp_path):
    """A toy lake written with 4 shards, and the config of changed values for the same keys."""
    write_csv(tmp_path / "a" / "orders.csv", HEADER, ["1,c1,10.0,2,DE,AB1,1", "2,c2,20.5,1,FR,CD2,1"])
    config = toy_config(tmp_path / "a", tmp_path / "a" / "orders.csv", tmp_path / "lake")
    ingest(spark, config, "four-shards")
    write_csv(tmp_path / "b" / "orders.csv", HEADER, ["1,c1,11.0,2,DE,AB1,2", "2,c2,21.5,1,FR,CD2,2"])
    return config


@pytest.mark.parametrize("overrides, named", [
    (["dataset.shards=8"], r"dataset.shards is '8' in the configuration but the table was written with '4'"),
    (["dataset.splits.train=50", "dataset.splits.validation=30"],
     r"dataset.splits \(train/validation/test\) is '50/30/20'.*'60/20/20'"),
    (["dataset.splits.salt=other"], r"dataset.splits.salt is 'other'.*'toy-salt'"),
])
def test_a_changed_layout_is_refused_before_any_write(spark, tmp_path, reliability, overrides, named):
    config = shard_change(spark, tmp_path)
    versions = {n: delta_io.latest_version(spark, Lake.at(config.lake.root).table("toy", n))
                for n in ("clean", "quarantine", "ingest_runs")}
    changed = toy_config(tmp_path / "b", tmp_path / "b" / "orders.csv", tmp_path / "lake", *overrides)
    with pytest.raises(LayoutChangeError, match=named + r".*Refused before any write.*--rebuild-layout"):
        ingest(spark, changed, "changed-layout")
    after = {n: delta_io.latest_version(spark, Lake.at(config.lake.root).table("toy", n)) for n in versions}
    reliability.record(f"layout changed ({', '.join(overrides)}) between runs", "refused before any write", 0,
                       duplicated_keys(spark, config))
    assert after == versions


def test_a_rebuild_rewrites_the_table_in_the_new_layout_in_one_commit(spark, tmp_path, reliability):
    config = shard_change(spark, tmp_path)
    before = table(spark, config, "clean")
    before_rows = spark.createDataFrame(before.collect(), before.schema)
    eight = toy_config(tmp_path / "b", tmp_path / "b" / "orders.csv", tmp_path / "lake", "dataset.shards=8")
    version_before = delta_io.latest_version(spark, Lake.at(config.lake.root).table("toy", "clean"))
    assert rebuild_layout(spark, Lake.at(eight.lake.root), eight.dataset) == version_before + 1
    expected = before_rows.withColumn("shard", F.expr("pmod(xxhash64(order_id), 8)").cast("int"))
    assertDataFrameEqual(table(spark, config, "clean"), expected)
    assert delta_io.table_constraints(spark, Lake.at(config.lake.root).table("toy", "clean"))["shard_in_range"] \
        == "shard >= 0 AND shard < 8"
    ingest(spark, eight, "eight-shards")
    updated = table(spark, config, "clean").select("order_id", "amount", "shard")
    reliability.record("layout rebuilt (4 -> 8 shards), then changed values ingested", "one row per key", 0,
                       duplicated_keys(spark, config))
    assertDataFrameEqual(updated, spark.createDataFrame([(1, 11.0), (2, 21.5)], "order_id int, amount double")
                         .withColumn("shard", F.expr("pmod(xxhash64(order_id), 8)").cast("int")))


def test_a_table_without_a_recorded_layout_gets_it_when_its_rows_match(spark, tmp_path):
    config = shard_change(spark, tmp_path)
    path = Lake.at(config.lake.root).table("toy", "clean")
    spark.sql(f"ALTER TABLE delta.`{path}` UNSET TBLPROPERTIES ('shardlake.layout.shards', 'shardlake.layout.key', "
              "'shardlake.layout.splits', 'shardlake.layout.salt')")
    ingest(spark, toy_config(tmp_path / "b", tmp_path / "b" / "orders.csv", tmp_path / "lake"), "legacy")
    properties = delta_io.table_properties(spark, path)
    assert {k: v for k, v in properties.items() if k.startswith("shardlake.layout.")} == {
        "shardlake.layout.key": "order_id", "shardlake.layout.shards": "4",
        "shardlake.layout.splits": "60/20/20", "shardlake.layout.salt": "toy-salt"}


def quarantined(spark, config) -> list[tuple[str, list[str]]]:
    return sorted((r["raw"], list(r["rules"])) for r in table(spark, config, "quarantine").collect())


def test_without_order_by_rows_of_one_key_that_differ_are_all_quarantined(spark, tmp_path, reliability):
    source = write_csv(tmp_path / "orders.csv", HEADER, ["1,c1,10.0,2,DE,AB1,1", "1,c1,12.0,2,DE,AB1,1",
                                                         "2,c2,20.5,1,FR,CD2,1"])
    config = toy_config(tmp_path, source, tmp_path / "lake", "dataset.order_by=null")
    report = ingest(spark, config, "conflict")
    reliability.record("two different rows of one key, no order_by", "both quarantined as key_conflict", 0,
                       duplicated_keys(spark, config))
    assert quarantined(spark, config) == [("1,c1,10.0,2,DE,AB1,1", ["key_conflict"]),
                                          ("1,c1,12.0,2,DE,AB1,1", ["key_conflict"])]
    assert [r["order_id"] for r in table(spark, config, "clean").collect()] == [2]
    assert (report.conflicts, report.rule_counts.get("key_conflict")) == (2, 2)


def test_keep_one_keeps_the_same_row_whether_the_rows_come_together_or_in_two_runs(spark, tmp_path):
    rows = ["1,c1,10.0,2,DE,AB1,1", "1,c1,12.0,2,DE,AB1,1"]
    together = toy_config(tmp_path / "t", write_csv(tmp_path / "t" / "o.csv", HEADER, rows), tmp_path / "lake-t",
                          "dataset.order_by=null", "dataset.on_key_conflict=keep_one")
    ingest(spark, together, "together")
    apart = [toy_config(tmp_path / f"a{i}", write_csv(tmp_path / f"a{i}" / "o.csv", HEADER, [row]),
                        tmp_path / "lake-a", "dataset.order_by=null", "dataset.on_key_conflict=keep_one")
             for i, row in enumerate(reversed(rows))]
    for i, config in enumerate(apart):
        ingest(spark, config, f"apart-{i}")
    columns = ["order_id", "amount"]
    assertDataFrameEqual(table(spark, apart[0], "clean").select(*columns),
                         table(spark, together, "clean").select(*columns))


def test_order_by_gives_the_same_table_in_one_run_or_two_in_either_order(spark, tmp_path, reliability):
    old, new = "3,c1,30.0,3,DE,EF3,1", "3,c1,31.0,3,DE,EF3,2"
    results = {}
    for name, batches in {"one run": [[old, new]], "old then new": [[old], [new]], "new then old": [[new], [old]]}.items():
        folder = tmp_path / name.replace(" ", "-")
        for i, batch in enumerate(batches):
            config = toy_config(folder / str(i), write_csv(folder / str(i) / "o.csv", HEADER, batch), folder / "lake")
            ingest(spark, config, f"{name}-{i}")
        results[name] = [tuple(r) for r in table(spark, config, "clean").select("order_id", "amount").collect()]
    reliability.record("a newer and an older row of a key, in one run or two, either order",
                       "the newer row in every case", 0, 0)
    assert results == {name: [(3, 31.0)] for name in results}


def test_an_incoming_row_as_new_as_the_tables_but_different_is_a_conflict(spark, tmp_path):
    first = toy_config(tmp_path / "1", write_csv(tmp_path / "1" / "o.csv", HEADER, ["1,c1,10.0,2,DE,AB1,5"]),
                       tmp_path / "lake")
    ingest(spark, first, "first")
    second = toy_config(tmp_path / "2", write_csv(tmp_path / "2" / "o.csv", HEADER, ["1,c1,99.0,2,DE,AB1,5"]),
                        tmp_path / "lake")
    report = ingest(spark, second, "second")
    assert [tuple(r) for r in table(spark, first, "clean").select("order_id", "amount").collect()] == [(1, 10.0)]
    assert quarantined(spark, first) == [("1,c1,99.0,2,DE,AB1,5", ["key_conflict"])]
    assert (report.clean_rows, report.conflicts, report.rows_merged) == (0, 1, 0)


def unique_join(config):
    """``config`` with its join declared unique (dedupe: false)."""
    join = config.dataset.joins[0].model_copy(update={"dedupe": False})
    return config.model_copy(update={"dataset": config.dataset.model_copy(update={"joins": [join]})})


def test_a_right_side_declared_unique_that_is_not_is_refused_before_any_write(spark, tmp_path, reliability):
    source = write_csv(tmp_path / "orders.csv", HEADER, ["2,c2,20.5,1,FR,CD2,1"])
    config = unique_join(toy_config(tmp_path, source, tmp_path / "lake"))
    with pytest.raises(IngestError, match=r"join 'customers' .*customers.csv\): 1 rows repeat a join key"):
        ingest(spark, config, "fan-out")
    reliability.record("join source with a duplicate key, dedupe: false", "refused before any write", 0, 0)
    assert not delta_io.table_exists(spark, Lake.at(config.lake.root).table("toy", "clean"))


def test_right_side_rows_dropped_by_the_join_are_counted_in_the_report(spark, tmp_path):
    source = write_csv(tmp_path / "orders.csv", HEADER, ["2,c2,20.5,1,FR,CD2,1"])
    config = toy_config(tmp_path, source, tmp_path / "lake")
    write_csv(tmp_path / "customers.csv", "customer,segment,credit",  # the join's file, other lines
              ["c1,gold,100.0", "c2,silver,50.0", "c2,bronze,10.0", "c3,bronze,lots"])
    report = ingest(spark, config, "join-counts")
    assert report.joins == {"customers": {"records": 4, "parse_errors": 1, "blank_or_header_lines": 0,
                                          "duplicate_keys": 1, "used": 2}}


def test_a_join_that_multiplies_rows_fails_the_accounting_and_writes_nothing(spark, tmp_path, monkeypatch,
                                                                           reliability):
    from shardlake.stages import ingest as stage

    real_join = C.left_join
    monkeypatch.setattr(stage.C, "left_join", lambda df, *a, **k: (lambda j: j.unionByName(j))(real_join(df, *a, **k)))
    config = toy_config(tmp_path, write_csv(tmp_path / "orders.csv", HEADER, ["1,c1,10.0,2,DE,AB1,1",
                                                                              "2,c2,20.5,1,FR,CD2,1"]),
                        tmp_path / "lake")
    with pytest.raises(IngestError, match=r"accounting mismatch: 2 records read, but .* = 4"):
        ingest(spark, config, "inflated")
    reliability.record("a join that multiplies rows", "accounting mismatch, nothing written", 0, 0)
    assert not delta_io.table_exists(spark, Lake.at(config.lake.root).table("toy", "clean"))


def test_blank_and_repeated_header_lines_have_a_fate_of_their_own(spark, tmp_path, reliability):
    text = "\n".join([HEADER, "1,c1,10.0,2,DE,AB1,1", "", HEADER, "2,c2,20.5,1,FR,CD2,1"]) + "\n"
    (tmp_path / "orders.csv").write_text(text, encoding="utf-8")
    config = toy_config(tmp_path, tmp_path / "orders.csv", tmp_path / "lake")
    report = ingest(spark, config, "blank-and-header")
    reliability.record("a blank line and a repeated header line", "counted apart, not quarantined", 0,
                       duplicated_keys(spark, config))
    assert (report.rows_read, report.blank_lines, report.header_lines, report.clean_rows) == (2, 1, 1, 2)
    assert table(spark, config, "quarantine").count() == 0


def test_a_quoted_newline_is_part_of_one_record_and_its_raw_text_is_kept(spark, tmp_path, reliability):
    text = HEADER + '\n1,c1,10.0,2,DE,AB1,1\n7,"c\n3",8.0,1,FR,bad,1\n'
    (tmp_path / "orders.csv").write_text(text, encoding="utf-8")
    config = toy_config(tmp_path, tmp_path / "orders.csv", tmp_path / "lake")
    report = ingest(spark, config, "quoted-newline")
    reliability.record("a quoted field holding a newline (RFC 4180)", "one record", 0, duplicated_keys(spark, config))
    assert (report.rows_read, report.clean_rows, report.quarantined) == (2, 1, 1)
    assert quarantined(spark, config) == [('7,"c\n3",8.0,1,FR,bad,1', ["pattern:code"])]


def test_a_clustered_merge_reads_only_the_batch_range_and_still_finds_every_key(spark, tmp_path, reliability):
    first = ["1,c1,10.0,2,DE,AB1,1", "2,c2,20.5,1,FR,CD2,1", "3,c1,30.0,3,DE,EF3,1", "40,c1,4.0,1,DE,GH4,1"]
    second = ["3,c1,31.0,3,DE,EF3,2", "2,c2,19.0,1,FR,CD2,0", "20,c2,5.0,1,FR,IJ5,1"]
    configs = [toy_config(tmp_path / str(i), write_csv(tmp_path / str(i) / "o.csv", HEADER, lines), tmp_path / "lake",
                          "dataset.cluster_by=[order_id]") for i, lines in enumerate([first, second])]
    ingest(spark, configs[0], "first")
    report = ingest(spark, configs[1], "second")
    expected = spark.createDataFrame([(1, 10.0), (2, 20.5), (3, 31.0), (20, 5.0), (40, 4.0)],
                                     "order_id int, amount double")
    reliability.record("a MERGE pruned to the batch's key range (cluster_by)",
                       "the newer row updates, the older is quarantined, a new key is inserted", 0, 0)
    assertDataFrameEqual(table(spark, configs[1], "clean").select("order_id", "amount"), expected)
    assert (report.rows_inserted, report.rows_updated, report.superseded) == (1, 1, 1)


def daily_landing(tmp_path):
    """The toy lines landed in one folder per day (first half on 2024-01-01, second on 2024-01-02), and a config
    naming its source by interval."""
    landing = tmp_path / "landing"
    write_csv(landing / "2024-01-01" / "orders.csv", HEADER, FIRST_HALF)
    write_csv(landing / "2024-01-02" / "orders.csv", HEADER, SECOND_HALF)
    return toy_config(tmp_path, tmp_path / "unused.csv", tmp_path / "lake",
                      f"dataset.source.path={landing}/{{ds}}/orders.csv")


def ingest_day(spark, config, day: str):
    return run_ingest(spark, Lake.at(config.lake.root), config.dataset, f"day-{day}", REPO,
                      interval=DataInterval.daily(day))


def test_a_path_template_ingests_only_the_landing_folder_of_the_interval(spark, tmp_path):
    config = daily_landing(tmp_path)
    report = ingest_day(spark, config, "2024-01-01")
    stored = {r["order_id"] for r in table(spark, config, "clean").select("order_id").collect()}
    assert stored == {1, 2, 3}  # the clean keys of the first half only
    assert (report.rows_read, report.logical_date, report.interval_end) == (8, "2024-01-01", "2024-01-02")
    assert report.source_path == str(tmp_path / "landing" / "2024-01-01" / "orders.csv")


def test_a_rerun_of_an_earlier_interval_reports_the_version_that_interval_produced(spark, tmp_path, reliability):
    """Issue 12: a re-run that committed nothing took the table's latest version (a later day's) for its own."""
    config = daily_landing(tmp_path)
    first = ingest_day(spark, config, "2024-01-01")
    second = ingest_day(spark, config, "2024-01-02")
    again = ingest_day(spark, config, "2024-01-01")
    runs = table(spark, config, "ingest_runs").where(F.col("run_id") == "day-2024-01-01")
    reliability.record("a past interval's ingest re-run after a later one", "committed nothing, kept its version",
                       0, duplicated_keys(spark, config))
    assert second.table_version > first.table_version
    assert (again.rows_merged, again.table_version, again.quarantine_version) == (
        0, first.table_version, first.quarantine_version)
    assert [r["table_version"] for r in runs.collect()] == [first.table_version]
