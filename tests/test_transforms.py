"""Unit tests of the pure ingest transforms on tiny inline frames: content and schema."""
from __future__ import annotations

import math

from pyspark.sql import functions as F
from pyspark.sql import types as T
from pyspark.testing import assertDataFrameEqual

from shardlake.transforms import clean as C
from shardlake.transforms import parse as P

RAW_SCHEMA = "_raw string, _source_file string"


def test_split_fields_marks_a_short_line_malformed_and_keeps_its_text(spark):
    raw = spark.createDataFrame([("1,ann", "f.csv"), ("2,bob,7", "f.csv")], RAW_SCHEMA)
    actual = P.split_fields(raw, ["id", "name", "n"], "csv")
    expected = spark.createDataFrame(
        [("1,ann", "f.csv", "1", "ann", None, ["malformed"]), ("2,bob,7", "f.csv", "2", "bob", "7", [])],
        "_raw string, _source_file string, id string, name string, n string, _parse_errors array<string>")
    assertDataFrameEqual(actual, expected)


def test_cast_columns_flags_values_that_do_not_convert_and_reads_na_as_missing(spark):
    strings = spark.createDataFrame([("r1", "f", "12.5", "NA", []), ("r2", "f", "7", "x", [])],
                                    "_raw string, _source_file string, id string, amount string, "
                                    "_parse_errors array<string>")
    actual = P.cast_columns(strings, [("id", "int"), ("amount", "double")], ["NA"])
    expected = spark.createDataFrame([("r1", "f", None, None, ["type:id"]), ("r2", "f", 7, None, ["type:amount"])],
                                     "_raw string, _source_file string, id int, amount double, "
                                     "_parse_errors array<string>")
    assertDataFrameEqual(actual, expected)


def test_flag_violations_lists_every_rule_a_row_breaks(spark):
    rows = spark.createDataFrame([(1, 5000.0, "ZZZ", "bad", []), (2, 10.0, "JFK", "ABC", []),
                                  (3, float("nan"), "JFK", "ABC", ["type:x"])],
                                 "id int, distance double, origin string, code string, _parse_errors array<string>")
    actual = C.flag_violations(rows, required=["id"], ranges={"distance": (1, 4000)}, allowed={"origin": ["JFK"]},
                               patterns={"code": "^[A-Z]{3}$"}, finite=["distance"])
    expected = spark.createDataFrame(
        [(1, 5000.0, "ZZZ", "bad", ["range:distance", "allowed:origin", "pattern:code"]),
         (2, 10.0, "JFK", "ABC", []), (3, float("nan"), "JFK", "ABC", ["type:x"])],
        "id int, distance double, origin string, code string, _violations array<string>")
    assertDataFrameEqual(actual, expected)


def test_shard_and_split_depend_on_the_key_alone(spark):
    first = spark.createDataFrame([(i, f"a{i}") for i in range(50)], "id int, payload string")
    second = spark.createDataFrame([(i, f"other{i}") for i in reversed(range(50))], "id int, payload string")
    place = lambda df: C.add_shard_and_split(df, ["id"], 4, 80, 10, "salt").select("id", "shard", "split")  # noqa: E731
    assertDataFrameEqual(place(first), place(second))
    assert {r["shard"] for r in place(first).collect()} <= {0, 1, 2, 3}


def test_shard_is_pmod_of_xxhash64_of_the_key(spark):
    df = spark.createDataFrame([(1, "x"), (2, "y")], "id int, carrier string")
    actual = C.add_shard_and_split(df, ["id", "carrier"], 8, 80, 10, "s").select("id", "shard")
    expected = df.select("id", F.expr("pmod(xxhash64(id, carrier), 8)").cast("int").alias("shard"))
    assertDataFrameEqual(actual, expected)


def test_mark_duplicates_keeps_latest_per_key_and_counts_exact_copies(spark):
    rows = spark.createDataFrame(
        [("a", "f", 1, 1, 10.0, [], 0, "train"), ("a", "f", 1, 1, 10.0, [], 0, "train"),
         ("c", "f", 1, 2, 11.0, [], 0, "train"), ("d", "f", 2, 1, 5.0, ["type:v"], 0, "train")],
        "_raw string, _source_file string, id int, version int, v double, _violations array<string>, "
        "shard int, split string")
    actual = C.mark_duplicates(rows, ["id"], order_by="version").select("_raw", C.FATE)
    # The two identical older rows: one is superseded by c, its copy is the counted duplicate.
    expected = spark.createDataFrame([("a", "superseded"), ("a", "duplicate"), ("c", "clean"), ("d", "invalid")],
                                     "_raw string, _fate string")
    assertDataFrameEqual(actual, expected)


def test_fill_missing_replaces_nulls_and_nan(spark):
    df = spark.createDataFrame([(1, None), (2, float("nan")), (3, 4.0)], "id int, temp double")
    actual = C.fill_missing(df, {"temp": 1.5})
    expected = spark.createDataFrame([(1, 1.5), (2, 1.5), (3, 4.0)], "id int, temp double")
    assertDataFrameEqual(actual, expected)
    assert not math.isnan(actual.agg(F.sum("temp")).first()[0])


def test_quarantine_records_keep_identical_bad_lines_apart(spark):
    rejected = spark.createDataFrame(
        [("x,y", "f.csv", ["malformed"], "invalid"), ("x,y", "f.csv", ["malformed"], "invalid")],
        "_raw string, _source_file string, _violations array<string>, _fate string")
    actual = C.quarantine_records(rejected, "run-1")
    assert actual.select("record_id").distinct().count() == 2
    expected = spark.createDataFrame([("f.csv", "x,y", ["malformed"], "run-1")] * 2,
                                     "source_file string, raw string, rules array<string>, run_id string")
    assertDataFrameEqual(actual.drop("record_id"), expected)
    assert actual.schema["record_id"].dataType == T.StringType()
