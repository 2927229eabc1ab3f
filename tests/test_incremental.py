"""Which rows an incremental run scores, and which predictions describe a table version: key and content hash."""
from __future__ import annotations

from pyspark.testing import assertDataFrameEqual

from shardlake.transforms import incremental as I


def test_unscored_keeps_keys_without_a_prediction_of_that_model(spark):
    source = spark.createDataFrame([(1, "a", 1.0, 11), (2, "b", 2.0, 12), (3, None, 3.0, 13), (4, "d", 4.0, 14)],
                                   "k int, c string, x double, h long")
    predictions = spark.createDataFrame([(1, "a", "m1", 11), (3, None, "m1", 13), (4, "d", "m2", 14)],
                                        "k int, c string, model_version string, ph long")
    expected = spark.createDataFrame([(2, "b", 2.0, 12), (4, "d", 4.0, 14)], "k int, c string, x double, h long")
    assertDataFrameEqual(I.unscored(source, predictions, ["k", "c"], "m1", "h", "ph"), expected)


def test_unscored_keeps_a_row_whose_content_changed_since_it_was_scored(spark):
    source = spark.createDataFrame([(1, 1.0, 11), (2, 2.5, 99)], "k int, x double, h long")
    predictions = spark.createDataFrame([(1, "m1", 11), (2, "m1", 12)], "k int, model_version string, ph long")
    expected = spark.createDataFrame([(2, 2.5, 99)], "k int, x double, h long")
    assertDataFrameEqual(I.unscored(source, predictions, ["k"], "m1", "h", "ph"), expected)


def test_unscored_keeps_a_row_whose_prediction_has_no_hash(spark):
    source = spark.createDataFrame([(1, 1.0, 11)], "k int, x double, h long")
    predictions = spark.createDataFrame([(1, "m1", None)], "k int, model_version string, ph long")
    assertDataFrameEqual(I.unscored(source, predictions, ["k"], "m1", "h", "ph"), source)


def test_for_source_keeps_the_model_predictions_of_rows_still_in_the_table(spark):
    source = spark.createDataFrame([(1, 1.0, 11), (2, 2.0, 12)], "k int, x double, h long")
    predictions = spark.createDataFrame([(1, 0.1, "m1", 11), (2, 0.2, "m2", 12), (9, 0.9, "m1", 19)],
                                        "k int, score double, model_version string, ph long")
    expected = spark.createDataFrame([(1, 0.1, "m1", 11)], "k int, score double, model_version string, ph long")
    assertDataFrameEqual(I.for_source(predictions, source, ["k"], "m1", "h", "ph"), expected)


def test_for_source_drops_a_prediction_of_a_rows_older_content(spark):
    source = spark.createDataFrame([(1, 1.5, 21)], "k int, x double, h long")
    predictions = spark.createDataFrame([(1, 0.1, "m1", 11)], "k int, score double, model_version string, ph long")
    assert I.for_source(predictions, source, ["k"], "m1", "h", "ph").collect() == []
