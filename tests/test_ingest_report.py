"""The ingest's accounting from its staged rows (``stages.ingest_report``), against counts worked out by hand."""
from __future__ import annotations

import pytest

from shardlake.stages.ingest_report import staged_accounting

STAGED = ("_source_file string, _fate string, _violations array<string>, split string, "
          "temp double, seats int, day int")
ROWS = [
    ("a.csv", "clean", [], "train", 10.0, 100, 3),
    ("a.csv", "clean", [], "train", None, 200, 5),
    ("a.csv", "clean", [], "test", 99.0, 900, 1),  # not training: no fill statistic learns from it
    ("a.csv", "invalid", ["required:temp", "range:day"], "train", None, 1, 40),
    ("b.csv", "invalid", ["range:day"], "train", 1.0, 1, 0),
    ("b.csv", "duplicate", [], "train", 10.0, 100, 3),
    ("b.csv", "superseded", [], "validation", 7.0, 7, 2),
]


@pytest.fixture(scope="module")
def accounted(spark):
    staged = spark.createDataFrame(ROWS, STAGED)
    return staged_accounting(staged, ["required:temp", "range:day", "pattern:x"],
                             {"temp": ("mean", None), "seats": ("median", None), "code": ("constant", "x")},
                             ["day"])


def test_fates_are_counted_per_file_and_in_all(accounted):
    counts, files = accounted
    assert files == {"a.csv": {"clean": 3, "invalid": 1}, "b.csv": {"invalid": 1, "duplicate": 1, "superseded": 1}}
    assert {k: v for k, v in counts.items() if k.startswith("fate:")} == {
        "fate:clean": 3, "fate:invalid": 2, "fate:duplicate": 1, "fate:superseded": 1, "fate:conflict": 0}


def test_each_rule_counts_the_rows_that_break_it_and_unbroken_rules_count_zero(accounted):
    counts, _ = accounted
    assert {k: v for k, v in counts.items() if k.startswith("rule:")} == {
        "rule:required:temp": 1, "rule:range:day": 2, "rule:pattern:x": 0}


def test_fill_statistics_learn_from_clean_training_rows_only(accounted):
    counts, _ = accounted
    assert (counts["fill:temp"], counts["fill:seats"]) == (10.0, 100.0)


def test_cluster_ranges_span_the_clean_rows_only(accounted):
    counts, _ = accounted
    assert (counts["min:day"], counts["max:day"]) == (1, 5)


def test_an_empty_stage_counts_zero_everywhere(spark):
    counts, files = staged_accounting(spark.createDataFrame([], STAGED), ["range:day"], {"temp": ("mean", None)},
                                      ["day"])
    assert files == {}
    assert counts == {"fate:clean": 0, "fate:invalid": 0, "fate:duplicate": 0, "fate:superseded": 0,
                      "fate:conflict": 0, "rule:range:day": 0, "fill:temp": None, "min:day": None, "max:day": None}
