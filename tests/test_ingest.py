"""The ingest stage end to end on a tiny dataset onboarded by one YAML file (no Python).

One module fixture ingests the same input twice and then a second batch, so the expensive runs
happen once; each test checks one behaviour of those runs (content and schema of the tables,
the quarantine, the accounting, idempotency, MERGE by key), or runs the stage itself when the
behaviour is a refusal (fail_fast, schema changes), which stops before any write.
"""
from __future__ import annotations

import pyarrow as pa
import pytest
from deltalake import DeltaTable
from pyspark.sql import functions as F
from pyspark.sql import types as T
from pyspark.testing import assertDataFrameEqual

from shardlake import delta_io
from shardlake.lake import Lake
from shardlake.sources import SourceError
from shardlake.stages.ingest import IngestError, observed

from ingest_helpers import CLEAN_SCHEMA, HEADER, LINES, ingest, placed, table, toy_config, write_csv


@pytest.fixture(scope="module")
def runs(spark, tmp_path_factory):
    """First run, the same input again, then a second batch (newer, older and new keys)."""
    folder = tmp_path_factory.mktemp("toy")
    source = write_csv(folder / "orders.csv", HEADER, [line for line, _ in LINES])
    config = toy_config(folder, source, folder / "lake")
    first = ingest(spark, config, "run-1")
    after_first = {name: table(spark, config, name).collect() for name in ("clean", "quarantine")}
    second = ingest(spark, config, "run-2")
    after_second = {name: table(spark, config, name).collect() for name in ("clean", "quarantine")}
    batch = write_csv(folder / "orders2.csv", HEADER, ["3,c1,32.0,3,DE,EF3,3", "1,c1,9.0,2,DE,AB1,0",
                                                       "13,c3,1.0,1,FR,WX3,1"])
    batch_config = toy_config(folder, batch, folder / "lake")
    third = ingest(spark, batch_config, "run-3")
    return {"config": config, "folder": folder, "source": source, "first": first, "second": second,
            "third": third, "after_first": after_first, "after_second": after_second}


def expected_first_clean(spark, fill_credit: float):
    rows = [(1, "c1", 10.0, 2, "DE", "AB1", 1, "gold", 100.0, 20.0),
            (2, "c2", 20.5, 1, "FR", "CD2", 1, "silver", 50.0, 20.5),
            (3, "c1", 31.0, 3, "DE", "EF3", 2, "gold", 100.0, 93.0),
            (11, "c9", 4.0, 2, "FR", "ST1", 1, "unknown", fill_credit, 8.0),
            (12, "c2", 100.0, 0, "DE", "UV2", 1, "silver", 50.0, None)]
    return placed(spark, rows, "order_id int, customer string, amount double, qty int, country string, "
                               "code string, updated int, segment string, credit double, total double")


def train_mean_credit(spark) -> float:
    """Mean credit of the clean rows with a known credit that fall in the training split."""
    known = placed(spark, [(1, 100.0), (2, 50.0), (3, 100.0), (12, 50.0)], "order_id int, credit double")
    value = known.where(F.col("split") == "train").agg(F.avg("credit")).first()[0]
    return round(value, 9) if value is not None else 0.0


def test_clean_table_holds_the_clean_rows_joined_derived_filled_and_placed(spark, runs):
    clean = spark.createDataFrame(runs["after_first"]["clean"], CLEAN_SCHEMA).drop("_row_hash")
    assertDataFrameEqual(clean, expected_first_clean(spark, train_mean_credit(spark)))


def test_clean_table_schema_is_declared_columns_joins_derived_shard_split(spark, runs):
    assert table(spark, runs["config"], "clean").schema == CLEAN_SCHEMA


def test_fill_statistic_is_computed_on_the_training_split_only(runs, spark):
    assert runs["first"].fill_values == {"credit": train_mean_credit(spark), "segment": "unknown", "qty": 0}


def test_quarantine_holds_raw_text_broken_rules_and_run_id(spark, runs):
    quarantine = spark.createDataFrame(runs["after_first"]["quarantine"],
                                       table(spark, runs["config"], "quarantine").schema)
    expected = spark.createDataFrame([
        ("3,c1,30.0,3,DE,EF3,1", ["superseded_by_newer_key"]), ("4,,5.0,1,DE,GH4,1", ["required:customer"]),
        ("5,c2,-1,1,DE,IJ5,1", ["range:amount"]), ("6,c3,7.0,1,US,KL6,1", ["allowed:country"]),
        ("7,c3,8.0,1,FR,bad,1", ["pattern:code"]), ("8,c1,NaN,1,FR,MN7,1", ["range:amount", "finite:amount"]),
        ("9,c1,12.5.1,1,FR,OP8,1", ["type:amount"]), ("10,c1,1.0", ["malformed"]),
        ("x,c1,1.0,1,DE,QR9,1", ["type:order_id"]),
    ], "raw string, rules array<string>").withColumns({
        "run_id": F.lit("run-1"), "source_file": F.lit(runs["source"].resolve().as_uri())})
    assertDataFrameEqual(quarantine.drop("record_id"), expected.select("source_file", "raw", "rules", "run_id"))
    assert quarantine.select("record_id").distinct().count() == 9


def test_quarantine_schema(spark, runs):
    assert table(spark, runs["config"], "quarantine").schema == T.StructType([
        T.StructField("record_id", T.StringType(), False), T.StructField("source_file", T.StringType()),
        T.StructField("raw", T.StringType()), T.StructField("rules", T.ArrayType(T.StringType())),
        T.StructField("run_id", T.StringType())])


def test_accounting_adds_up_and_counts_each_rule(runs):
    report = runs["first"]
    assert (report.rows_read, report.clean_rows, report.quarantined, report.duplicates_removed) == (15, 5, 9, 1)
    assert report.rows_read == report.clean_rows + report.quarantined + report.duplicates_removed
    assert report.rule_counts == {"malformed": 1, "type:order_id": 1, "type:amount": 1, "required:customer": 1,
                                  "range:amount": 2, "allowed:country": 1, "pattern:code": 1, "finite:amount": 1,
                                  "superseded_by_newer_key": 1}


def test_rows_per_shard_and_skew_are_reported_from_the_table(runs, spark):
    expected = {s: 0 for s in range(4)}
    for row in expected_first_clean(spark, 0.0).select("shard").collect():
        expected[row["shard"]] += 1
    report = runs["first"]
    assert report.shard_counts == expected
    assert report.skew_ratio == round(max(expected.values()) / (sum(expected.values()) / 4), 4)
    assert report.skew_warning == (report.skew_ratio > 1.5)


def test_the_run_records_the_table_version_it_produced(spark, runs):
    recorded = table(spark, runs["config"], "ingest_runs").select("run_id", "table_version", "clean_rows")
    expected = spark.createDataFrame(
        [("run-1", runs["first"].table_version, 5), ("run-2", runs["first"].table_version, 5),
         ("run-3", runs["third"].table_version, 2)], "run_id string, table_version long, clean_rows long")
    assertDataFrameEqual(recorded, expected)


def test_same_input_twice_leaves_content_identical_and_commits_nothing(runs):
    assert runs["after_second"] == runs["after_first"]
    assert (runs["second"].table_version, runs["second"].quarantine_version) == \
        (runs["first"].table_version, runs["first"].quarantine_version)
    assert runs["second"].rows_merged == 0


def test_a_row_older_than_the_tables_row_of_its_key_is_quarantined_as_superseded(spark, runs):
    third = table(spark, runs["config"], "quarantine").where(F.col("run_id") == "run-3").select("raw", "rules")
    assertDataFrameEqual(third, spark.createDataFrame([("1,c1,9.0,2,DE,AB1,0", ["superseded_by_newer_key"])],
                                                      "raw string, rules array<string>"))
    assert (runs["third"].superseded, runs["third"].quarantined, runs["third"].rows_merged) == (1, 1, 2)


def test_new_input_is_merged_by_key_newer_rows_win_older_rows_do_not(spark, runs):
    clean = table(spark, runs["config"], "clean").select("order_id", "amount", "updated", "segment")
    expected = spark.createDataFrame(
        [(1, 10.0, 1, "gold"), (2, 20.5, 1, "silver"), (3, 32.0, 3, "gold"), (11, 4.0, 1, "unknown"),
         (12, 100.0, 1, "silver"), (13, 1.0, 1, "bronze")], "order_id int, amount double, updated int, segment string")
    assertDataFrameEqual(clean, expected)


def test_clean_table_invariants_are_delta_check_constraints(spark, runs):
    path = str(Lake.at(runs["config"].lake.root).table("toy", "clean"))
    constraints = delta_io.table_constraints(spark, path)
    assert constraints["range_amount"] == "amount IS NULL OR (amount >= 0.0 AND amount <= 1000.0)"
    assert constraints["allowed_country"] == "country IS NULL OR country IN ('DE', 'FR')"
    assert constraints["shard_in_range"] == "shard >= 0 AND shard < 4"
    assert set(constraints) == {"shard_in_range", "split_known", "required_order_id", "required_customer",
                                "range_amount", "allowed_country", "pattern_code", "finite_amount"}
    bad = table(spark, runs["config"], "clean").limit(1).withColumn("amount", F.lit(-5.0))
    with pytest.raises(Exception, match="range_amount"):
        bad.write.format("delta").mode("append").save(path)


def test_fail_fast_aborts_at_a_bad_row_and_leaves_every_table_as_it_was(spark, runs):
    config = runs["config"]
    before = {n: (delta_io.latest_version(spark, str(Lake.at(config.lake.root).table("toy", n))),
                  table(spark, config, n).collect()) for n in ("clean", "quarantine", "ingest_runs")}
    with pytest.raises(IngestError, match=r"fail_fast: rules \[range:amount\] broken by record 5,c2,-1"):
        bad = write_csv(runs["folder"] / "bad" / "orders.csv", HEADER, ["20,c1,1.0,1,DE,AB1,1", "5,c2,-1,1,DE,IJ5,1"])
        ingest(spark, toy_config(runs["folder"] / "bad", bad, config.lake.root), "run-ff", mode="fail_fast")
    after = {n: (delta_io.latest_version(spark, str(Lake.at(config.lake.root).table("toy", n))),
                 table(spark, config, n).collect()) for n in ("clean", "quarantine", "ingest_runs")}
    assert after == before


def test_fail_fast_on_a_new_lake_creates_no_table(spark, tmp_path):
    source = write_csv(tmp_path / "orders.csv", HEADER, ["9,c1,12.5.1,1,FR,OP8,1"])
    config = toy_config(tmp_path, source, tmp_path / "lake")
    with pytest.raises(IngestError, match="type:amount"):
        ingest(spark, config, "ff", mode="fail_fast")
    assert not any(delta_io.table_exists(spark, str(Lake.at(tmp_path / "lake").table("toy", n)))
                   for n in ("clean", "quarantine", "ingest_runs"))


def test_a_changed_source_header_is_refused_naming_the_file(spark, tmp_path):
    source = write_csv(tmp_path / "orders.csv", HEADER + ",discount", ["1,c1,10.0,2,DE,AB1,1,0.5"])
    config = toy_config(tmp_path, source, tmp_path / "lake")
    with pytest.raises(SourceError, match=r"orders.csv: source schema changed: .*unexpected \['discount'\]"):
        ingest(spark, config, "changed")
    assert not delta_io.table_exists(spark, str(Lake.at(tmp_path / "lake").table("toy", "clean")))


def test_a_changed_table_schema_is_refused_unless_evolution_is_allowed(spark, runs):
    config = runs["config"]
    changed = toy_config(runs["folder"] / "changed", runs["source"], config.lake.root,
                         "dataset.derived.big=amount > 100")
    version = delta_io.latest_version(spark, str(Lake.at(config.lake.root).table("toy", "clean")))
    with pytest.raises(delta_io.SchemaChangeError, match=r"new column big \(boolean\).*allow_schema_evolution"):
        ingest(spark, changed, "changed-schema")
    assert delta_io.latest_version(spark, str(Lake.at(config.lake.root).table("toy", "clean"))) == version


def test_with_evolution_allowed_a_source_with_new_and_reordered_columns_is_read_by_name(spark, tmp_path):
    header = "updated,order_id,customer,amount,qty,country,code,discount"
    source = write_csv(tmp_path / "orders.csv", header, ["1,1,c1,10.0,2,DE,AB1,0.5"])
    config = toy_config(tmp_path, source, tmp_path / "lake", "dataset.allow_schema_evolution=true")
    ingest(spark, config, "evolved")
    clean = table(spark, config, "clean").select("order_id", "customer", "amount", "qty", "updated")
    assertDataFrameEqual(clean, spark.createDataFrame([(1, "c1", 10.0, 2, 1)],
                                                      "order_id int, customer string, amount double, qty int, "
                                                      "updated int"))


def test_counts_spark_did_not_report_are_zero_only_for_an_empty_input(spark):
    empty = spark.createDataFrame([], "x int")
    assert observed({}, empty) == {"record": 0, "blank": 0, "header": 0}
    with pytest.raises(IngestError, match="not reported"):
        observed({}, spark.createDataFrame([(1,)], "x int"))
    assert observed({"record": 3}, empty) == {"record": 3}


def test_the_clean_tables_files_keep_statistics_for_the_key_only(runs):
    path = Lake.at(runs["config"].lake.root).table("toy", "clean")
    actions = pa.table(DeltaTable(path).get_add_actions(flatten=True)).to_pydict()
    with_min = {name.removeprefix("min.") for name, values in actions.items()
                if name.startswith("min.") and any(v is not None for v in values)}
    assert with_min == {"order_id"}
    assert sum(actions["num_records"]) == 6  # keys 1, 2, 3, 11, 12 and the third run's 13: row counts stay
