"""Feature statistics (transforms/stats.py): category vocabularies hold each column's own values, typed."""
from __future__ import annotations

import json

from shardlake.transforms.stats import fit_feature_stats


def _vocab_json(spark, rows, schema: str, columns, max_categories: int = 10) -> str:
    """The fitted vocabularies as stored (JSON): tells 1 from "1", true from "true", 1.0 from 1."""
    stats = fit_feature_stats(spark.createDataFrame(rows, schema), [], columns, max_categories)
    return json.dumps(stats.vocab, sort_keys=True)


def test_vocabularies_of_int_bool_and_double_columns_hold_their_typed_values(spark):
    rows = [(3, True, 0.5), (1, False, 1.5), (3, True, None), (None, None, 0.5)]
    got = _vocab_json(spark, rows, "gate int, flag boolean, ratio double", ["gate", "flag", "ratio"])
    assert got == '{"flag": [false, true], "gate": [1, 3], "ratio": [0.5, 1.5]}'


def test_a_long_column_keeps_integers_beyond_double_precision(spark):
    big = 2**53 + 1  # not representable as a double: a detour through float would change it
    assert _vocab_json(spark, [(big,), (7,)], "id long", ["id"]) == f'{{"id": [7, {big}]}}'


def test_frequency_ties_between_numbers_go_to_the_smaller_number(spark):
    rows = [(5,), (5,), (10,), (9,)]  # 10 and 9 tie; as text "10" would sort first
    assert _vocab_json(spark, rows, "gate int", ["gate"], max_categories=2) == '{"gate": [5, 9]}'


def test_nan_is_missing_not_a_category(spark):
    rows = [(float("nan"),), (float("nan"),), (1.0,)]
    assert _vocab_json(spark, rows, "ratio double", ["ratio"]) == '{"ratio": [1.0]}'


def test_string_vocabularies_are_unchanged(spark):
    rows = [("b",), ("a",), ("b",), (None,)]
    assert _vocab_json(spark, rows, "cat string", ["cat"]) == '{"cat": ["a", "b"]}'
