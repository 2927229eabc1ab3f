"""A batch's clean rows against the table's rows of the same keys: the in-batch rule, applied across runs."""
from __future__ import annotations

import pytest
from pyspark.testing import assertDataFrameEqual

from shardlake.transforms import keys as K

SCHEMA = "id int, updated int, v double, shard int, split string, _row_hash long"


def verdicts(spark, incoming, table, order_by="updated", on_conflict="quarantine"):
    s = spark.createDataFrame(incoming, SCHEMA)
    t = spark.createDataFrame(table, SCHEMA)
    return K.against_table(s, t, ["id"], order_by, on_conflict).select("id", K.AGAINST)


def expected(spark, rows):
    return spark.createDataFrame(rows, f"id int, {K.AGAINST} string")


TABLE = [(1, 5, 1.0, 0, "train", 100), (2, 5, 2.0, 0, "train", 200), (3, None, 3.0, 0, "train", 300)]


def test_new_same_newer_and_older_rows_with_order_by(spark):
    incoming = [(1, 5, 1.0, 0, "train", 100), (2, 6, 2.5, 0, "train", 201), (4, 1, 4.0, 0, "train", 400),
                (3, 1, 3.5, 0, "train", 301)]
    assertDataFrameEqual(verdicts(spark, incoming, TABLE),
                         expected(spark, [(1, "same"), (2, "update"), (4, "new"), (3, "update")]))


def test_an_older_row_is_superseded_and_a_null_order_is_oldest(spark):
    incoming = [(2, 4, 2.5, 0, "train", 201), (1, None, 1.5, 0, "train", 101)]
    assertDataFrameEqual(verdicts(spark, incoming, TABLE), expected(spark, [(2, "superseded"), (1, "superseded")]))


@pytest.mark.parametrize("policy, verdict", [("quarantine", "conflict"), ("replace", "update")])
def test_a_tie_that_differs_follows_the_policy(spark, policy, verdict):
    incoming = [(2, 5, 9.0, 0, "train", 999)]
    assertDataFrameEqual(verdicts(spark, incoming, TABLE, on_conflict=policy), expected(spark, [(2, verdict)]))


def test_keep_one_keeps_the_smaller_hash_against_the_table(spark):
    incoming = [(1, 5, 0.5, 0, "train", 50), (2, 5, 9.0, 0, "train", 999)]
    assertDataFrameEqual(verdicts(spark, incoming, TABLE, on_conflict="keep_one"),
                         expected(spark, [(1, "update"), (2, "superseded")]))


def test_without_order_by_a_changed_row_is_a_conflict_unless_replace(spark):
    incoming = [(1, 5, 1.5, 0, "train", 101)]
    assert verdicts(spark, incoming, TABLE, order_by=None).first()[K.AGAINST] == "conflict"
    assert verdicts(spark, incoming, TABLE, order_by=None, on_conflict="replace").first()[K.AGAINST] == "update"


def test_incoming_wins_is_the_merge_condition_of_the_same_rule():
    assert K.incoming_wins("updated", "quarantine") == (
        "((s.`updated` > t.`updated` OR (t.`updated` IS NULL AND s.`updated` IS NOT NULL)) "
        "OR (s.`updated` <=> t.`updated` AND false))")


def test_within_keeps_only_rows_inside_every_range(spark):
    rows = spark.createDataFrame([(1, 5), (2, 7), (3, 9), (4, 5)], "day int, month int")
    kept = rows.where(K.within({"day": (2, 4), "month": (5, 7)}))
    assertDataFrameEqual(kept, spark.createDataFrame([(2, 7), (4, 5)], "day int, month int"))


def test_within_a_batch_without_rows_matches_nothing_and_no_ranges_prune_nothing(spark):
    rows = spark.createDataFrame([(1,)], "day int")
    assert rows.where(K.within({"day": (None, None)})).count() == 0
    assert K.within({}) is None
