"""The flights-like generator: deterministic, the flights schema, and the mess it is asked for."""
from __future__ import annotations

import pytest
from pyspark.sql import Window
from pyspark.sql import functions as F
from pyspark.testing import assertDataFrameEqual

from shardlake import synth
from shardlake.config import load_config
from shardlake.transforms import parse as P


@pytest.fixture(scope="module")
def flights(repo):
    """The flights dataset declaration (columns, types, key) from the project's configuration."""
    return load_config([repo / "conf" / "base.yaml"]).dataset


@pytest.fixture(scope="module")
def parsed(flights):
    """Generated lines -> the flights columns with their declared types (and parse errors)."""
    columns = [(c.name, c.type) for c in flights.columns]

    def parse(lines):
        raw = lines.select(F.col("line").alias("_raw"), F.lit("gen").alias("_source_file"))
        return P.cast_columns(P.split_fields(raw, [n for n, _ in columns], "csv"), columns, ["", "NA"], trim=False)
    return parse


def test_same_arguments_give_the_same_lines_whatever_the_partitioning(spark):
    lines = synth.flights_lines(spark, 300, seed=5, partitions=2)
    assert lines.count() == 300  # two empty frames would compare equal too
    assertDataFrameEqual(lines, synth.flights_lines(spark, 300, seed=5, partitions=3))


def test_clean_lines_parse_into_the_flights_schema_with_distinct_keys(spark, flights, parsed):
    rows = parsed(synth.flights_lines(spark, 400, mess=synth.Mess.none()))
    summary = rows.agg(F.count(F.lit(1)).alias("rows"), F.sum(F.size(P.PARSE_ERRORS)).alias("errors"),
                       F.count_distinct(*flights.key).alias("keys"))
    assertDataFrameEqual(summary, spark.createDataFrame([(400, 0, 400)], "rows long, errors long, keys long"))


def test_ids_map_to_days_then_origins_then_carriers(spark, parsed):
    rows = parsed(synth.flights_lines(spark, 366, mess=synth.Mess.none())).select(
        "year", "month", "day", "origin", "carrier", "flight")
    first = rows.where((F.col("month") == 1) & (F.col("day") == 1))
    assertDataFrameEqual(first, spark.createDataFrame([(2013, 1, 1, "EWR", "9E", 1), (2013, 1, 1, "JFK", "9E", 1)],
                                                      "year int, month int, day int, origin string, carrier string, "
                                                      "flight int"))


def test_exact_duplicates_repeat_the_line_before(spark):
    lines = synth.flights_lines(spark, 300, mess=synth.Mess(0, 0.2, 0, 0, 0, 0, 0, 0), partitions=1)
    with_previous = lines.withColumn("id", F.monotonically_increasing_id()).withColumn(
        "previous", F.lag("line").over(Window.orderBy("id")))
    repeats = with_previous.where(F.col("line") == F.col("previous")).count()
    assert 30 <= repeats <= 90 and lines.distinct().count() == 300 - repeats


def test_cancelled_flights_have_no_arrival(spark, parsed):
    rows = parsed(synth.flights_lines(spark, 50, mess=synth.Mess(1.0, 0, 0, 0, 0, 0, 0, 0)))
    assertDataFrameEqual(rows.select("arr_time", "arr_delay", "air_time").distinct(),
                         spark.createDataFrame([(None, None, None)], "arr_time int, arr_delay double, air_time double"))


def test_bad_types_out_of_range_and_truncated_lines_are_generated(spark, parsed):
    mess = synth.Mess(0, 0, 0, bad_type=0.3, out_of_range=0.3, malformed=0.3, bad_pattern=0, not_allowed=0)
    rows = parsed(synth.flights_lines(spark, 400, mess=mess))
    kinds = rows.select(
        F.exists(P.PARSE_ERRORS, lambda e: e == "malformed").alias("malformed"),
        F.exists(P.PARSE_ERRORS, lambda e: e.startswith("type:")).alias("bad_type"),
        ((F.col("month") > 12) | (F.col("distance") > 6000)).alias("out_of_range"))
    found = kinds.agg(*[F.max(F.col(c)).alias(c) for c in kinds.columns])
    assertDataFrameEqual(found, spark.createDataFrame([(True, True, True)],
                                                      "malformed boolean, bad_type boolean, out_of_range boolean"))


def test_written_files_start_with_the_header_and_hold_the_lines_verbatim(spark, tmp_path):
    lines = synth.flights_lines(spark, 20, mess=synth.Mess.none(), partitions=2)
    files = synth.write_csv(lines, tmp_path / "gen")
    texts = [f.read_text().splitlines() for f in files]
    assert all(t[0] == ",".join(synth.FLIGHT_COLUMNS) for t in texts)
    assert sorted(line for t in texts for line in t[1:]) == sorted(r["line"] for r in lines.collect())
