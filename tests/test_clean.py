"""Cleaning rules, duplicates, joins, fill and training-split statistics: one behaviour per test."""
from __future__ import annotations

import pytest
from pyspark.sql import functions as F
from pyspark.testing import assertDataFrameEqual

from shardlake.transforms import clean as C
from shardlake.transforms import stats as S

ROWS = "id int, v double, code string, _parse_errors array<string>"


def violations(spark, rows, **rules):
    return C.flag_violations(spark.createDataFrame(rows, ROWS), **rules).select("id", C.VIOLATIONS)


def expect(spark, rows):
    return spark.createDataFrame(rows, "id int, _violations array<string>")


def test_required_flags_missing_values(spark):
    actual = violations(spark, [(1, None, "A", []), (2, 1.0, "A", [])], required=["v"])
    assertDataFrameEqual(actual, expect(spark, [(1, ["required:v"]), (2, [])]))


def test_range_is_inclusive_and_open_ended_bounds_work(spark):
    actual = violations(spark, [(1, 0.0, "A", []), (2, 10.0, "A", []), (3, 10.5, "A", []), (4, None, "A", [])],
                        ranges={"v": (None, 10.0)})
    assertDataFrameEqual(actual, expect(spark, [(1, []), (2, []), (3, ["range:v"]), (4, [])]))


def test_allowed_values(spark):
    actual = violations(spark, [(1, 1.0, "A", []), (2, 1.0, "Z", [])], allowed={"code": ["A", "B"]})
    assertDataFrameEqual(actual, expect(spark, [(1, []), (2, ["allowed:code"])]))


def test_regex_pattern(spark):
    actual = violations(spark, [(1, 1.0, "AB1", []), (2, 1.0, "ab1", [])], patterns={"code": "^[A-Z]{2}[0-9]$"})
    assertDataFrameEqual(actual, expect(spark, [(1, []), (2, ["pattern:code"])]))


def test_finite_flags_nan_and_infinity(spark):
    actual = violations(spark, [(1, float("nan"), "A", []), (2, float("inf"), "A", []), (3, 1.0, "A", [])],
                        finite=["v"])
    assertDataFrameEqual(actual, expect(spark, [(1, ["finite:v"]), (2, ["finite:v"]), (3, [])]))


def test_a_row_that_did_not_parse_is_judged_on_its_parse_errors_alone(spark):
    actual = violations(spark, [(1, None, "bad", ["type:v"])], required=["v"], patterns={"code": "^A$"})
    assertDataFrameEqual(actual, expect(spark, [(1, ["type:v"])]))


def test_fail_fast_guard_raises_naming_rules_and_record(spark):
    flagged = spark.createDataFrame([("1,x", "f.csv", ["range:v"])],
                                    "_raw string, _source_file string, _violations array<string>")
    with pytest.raises(Exception, match=r"shardlake fail_fast: rules \[range:v\] broken by record 1,x in f.csv"):
        C.abort_on_violation(flagged).collect()


def test_fail_fast_guard_passes_valid_rows_unchanged(spark):
    flagged = spark.createDataFrame([("1,y", "f.csv", [])],
                                    "_raw string, _source_file string, _violations array<string>")
    assertDataFrameEqual(C.abort_on_violation(flagged), flagged)


def marked(spark, rows, order_by="version", on_conflict="quarantine"):
    df = spark.createDataFrame(rows, "_raw string, _source_file string, id int, version int, v double, "
                                     "_violations array<string>")
    placed = C.add_shard_and_split(df, ["id"], 2, 80, 10, "s")
    return C.mark_duplicates(placed, ["id"], order_by, on_conflict).select("_raw", C.FATE)


def fates(spark, rows):
    return spark.createDataFrame(rows, "_raw string, _fate string")


def test_exact_duplicates_with_nulls_are_duplicates(spark):
    actual = marked(spark, [("a", "f", 1, 1, None, []), ("b", "f", 1, 1, None, [])])
    # Identical rows: which text is kept is arbitrary, that one is kept and one is a duplicate is not.
    assert sorted(r["_fate"] for r in actual.collect()) == ["clean", "duplicate"]


def test_the_newest_row_of_a_key_is_kept_and_older_ones_superseded(spark):
    actual = marked(spark, [("old", "f", 1, 1, 1.0, []), ("new", "f", 1, 3, 2.0, []), ("mid", "f", 1, 2, 3.0, [])])
    assertDataFrameEqual(actual, fates(spark, [("old", "superseded"), ("new", "clean"), ("mid", "superseded")]))


def test_a_missing_ordering_value_counts_as_oldest(spark):
    actual = marked(spark, [("none", "f", 1, None, 1.0, []), ("one", "f", 1, 1, 2.0, [])])
    assertDataFrameEqual(actual, fates(spark, [("none", "superseded"), ("one", "clean")]))


def test_without_order_by_different_rows_of_a_key_are_all_conflicts(spark):
    actual = marked(spark, [("a", "f", 1, 1, 1.0, []), ("b", "f", 1, 1, 2.0, []), ("c", "f", 2, 1, 1.0, [])],
                    order_by=None)
    assertDataFrameEqual(actual, fates(spark, [("a", "conflict"), ("b", "conflict"), ("c", "clean")]))


def test_rows_tied_on_order_by_that_differ_are_conflicts_and_older_ones_superseded(spark):
    actual = marked(spark, [("a", "f", 1, 2, 1.0, []), ("b", "f", 1, 2, 2.0, []), ("old", "f", 1, 1, 3.0, [])])
    assertDataFrameEqual(actual, fates(spark, [("a", "conflict"), ("b", "conflict"), ("old", "superseded")]))


def test_a_copy_of_a_conflicting_row_is_a_duplicate(spark):
    actual = marked(spark, [("a", "f", 1, 1, 1.0, []), ("a2", "f", 1, 1, 1.0, []), ("b", "f", 1, 1, 2.0, [])],
                    order_by=None)
    assert sorted(r["_fate"] for r in actual.collect()) == ["conflict", "conflict", "duplicate"]


def test_keep_one_keeps_the_smallest_content_hash_of_a_conflict(spark):
    rows = [("a", "f", 1, 1, 1.0, []), ("b", "f", 1, 1, 2.0, [])]
    # The independent oracle: Spark's own xxhash64 over the data columns, in the declared order.
    hashes = {r["_raw"]: r["h"] for r in spark.createDataFrame(rows, "_raw string, _source_file string, id int, "
                                                                     "version int, v double, _violations array<string>")
              .select("_raw", F.xxhash64("id", "version", "v").alias("h")).collect()}
    kept = min(hashes, key=hashes.get)
    actual = marked(spark, rows, order_by=None, on_conflict="keep_one")
    assertDataFrameEqual(actual, fates(spark, [(raw, "clean" if raw == kept else "superseded") for raw in hashes]))


def test_invalid_rows_never_supersede_or_duplicate_valid_ones(spark):
    actual = marked(spark, [("bad", "f", 1, 9, 1.0, ["range:v"]), ("good", "f", 1, 1, 1.0, [])])
    assertDataFrameEqual(actual, fates(spark, [("bad", "invalid"), ("good", "clean")]))


def test_split_shares_follow_the_declared_percentages(spark):
    df = spark.range(20000).select(F.col("id").cast("int").alias("id"))
    shares = (C.add_shard_and_split(df, ["id"], 8, 80, 10, "salt").groupBy("split").count()
              .select("split", F.round(F.col("count") / 20000, 2).alias("share")))
    assertDataFrameEqual(shares, spark.createDataFrame([("train", 0.8), ("validation", 0.1), ("test", 0.1)],
                                                       "split string, share double"))


def test_split_does_not_depend_on_the_shard_count(spark):
    df = spark.range(200).select(F.col("id").cast("int").alias("id"))
    four = C.add_shard_and_split(df, ["id"], 4, 80, 10, "salt").select("id", "split")
    sixteen = C.add_shard_and_split(df, ["id"], 16, 80, 10, "salt").select("id", "split")
    assertDataFrameEqual(four, sixteen)


def test_left_join_never_multiplies_rows_and_keeps_unmatched(spark):
    left = spark.createDataFrame([(1, "a"), (2, "b")], "id int, k string")
    right = spark.createDataFrame([("a", 10, "x"), ("a", 11, "y")], "k string, seats int, other string")
    joined = C.left_join(left, C.unique_by(right, ["k"]), {"k": "k"}, ["seats"])
    assertDataFrameEqual(joined, spark.createDataFrame([(1, "a", 10), (2, "b", None)], "id int, k string, seats int"))


def test_derived_columns_are_sql_expressions(spark):
    df = spark.createDataFrame([(2, 3.0)], "qty int, price double")
    assertDataFrameEqual(C.derive(df, {"total": "qty * price", "big": "price > 2"}),
                         spark.createDataFrame([(2, 3.0, 6.0, True)],
                                               "qty int, price double, total double, big boolean"))


def test_fill_missing_casts_the_value_to_the_column_type(spark):
    df = spark.createDataFrame([(None, None), (3, "x")], "seats int, segment string")
    assertDataFrameEqual(C.fill_missing(df, {"seats": 149.0, "segment": "unknown"}),
                         spark.createDataFrame([(149, "unknown"), (3, "x")], "seats int, segment string"))


def test_superseded_rows_are_quarantined_under_their_own_rule(spark):
    rejected = spark.createDataFrame([("2,old", "f.csv", [], "superseded")],
                                     "_raw string, _source_file string, _violations array<string>, _fate string")
    actual = C.quarantine_records(rejected, "r").drop("record_id")
    assertDataFrameEqual(actual, spark.createDataFrame([("f.csv", "2,old", ["superseded_by_newer_key"], "r")],
                                                       "source_file string, raw string, rules array<string>, "
                                                       "run_id string"))


def test_fill_statistics_use_training_rows_only(spark):
    df = spark.createDataFrame([("train", 1.0, 10), ("train", 3.0, 20), ("train", None, 30), ("test", 100.0, 99)],
                               "split string, temp double, seats int")
    values = S.fit_fill_values(S.training_rows(df), {"temp": ("mean", None), "seats": ("median", None),
                                                     "precip": ("constant", 0.0)})
    assert values == {"temp": 2.0, "seats": 20.0, "precip": 0.0}


def test_fill_aggregates_ignore_nan_and_rows_outside_the_condition(spark):
    df = spark.createDataFrame([(True, 1.0), (True, float("nan")), (False, 50.0)], "keep boolean, temp double")
    row = df.agg(*S.fill_aggregates({"temp": ("mean", None)}, where=F.col("keep"))).first().asDict()
    assert S.fill_values_from(row, {"temp": ("mean", None)}) == {"temp": 1.0}


def test_feature_stats_mean_std_and_most_frequent_categories(spark):
    df = spark.createDataFrame([(1.0, "a"), (3.0, "b"), (5.0, "a"), (7.0, "c")], "x double, cat string")
    stats = S.fit_feature_stats(df, ["x"], ["cat"], max_categories=2)
    assert stats == S.FeatureStats(mean={"x": 4.0}, std={"x": 5.0 ** 0.5}, vocab={"cat": ["a", "b"]}, rows=4)
