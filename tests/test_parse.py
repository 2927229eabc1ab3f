"""Parsing with a declared schema: every record kept, with its raw text and the reason it did not parse."""
from __future__ import annotations

import zipfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pyspark.sql import functions as F
from pyspark.testing import assertDataFrameEqual

from shardlake import sources
from shardlake.config import SourceSpec
from shardlake.lake import Lake
from shardlake.stages.ingest import read_parsed
from shardlake.transforms import parse as P

RAW = "_raw string, _source_file string"
FIELDS = "_raw string, _source_file string, a string, b string, c string, _parse_errors array<string>"
TYPED = [("id", "int"), ("amount", "double"), ("when", "timestamp"), ("name", "string")]
TYPED_SCHEMA = ("_raw string, _source_file string, id int, amount double, when timestamp, name string, "
                "_parse_errors array<string>")


def strings(spark, rows):
    return spark.createDataFrame([("r", "f", *row, []) for row in rows],
                                 "_raw string, _source_file string, id string, amount string, when string, "
                                 "name string, _parse_errors array<string>")


def test_csv_quoted_delimiters_and_doubled_quotes_are_one_field(spark):
    raw = spark.createDataFrame([('1,"x, y","say ""hi"""', "f")], RAW)
    expected = spark.createDataFrame([('1,"x, y","say ""hi"""', "f", "1", "x, y", 'say "hi"', [])], FIELDS)
    assertDataFrameEqual(P.split_fields(raw, ["a", "b", "c"], "csv"), expected)


def test_csv_unclosed_quote_and_extra_field_are_malformed_with_raw_text_kept(spark):
    raw = spark.createDataFrame([('1,"open,3', "f"), ("1,2,3,4", "f")], RAW)
    actual = P.split_fields(raw, ["a", "b", "c"], "csv").select("_raw", "_parse_errors")
    expected = spark.createDataFrame([('1,"open,3', ["malformed"]), ("1,2,3,4", ["malformed"])],
                                     "_raw string, _parse_errors array<string>")
    assertDataFrameEqual(actual, expected)


def test_csv_fields_are_taken_by_name_and_missing_names_are_null(spark):
    raw = spark.createDataFrame([("3,1", "f")], RAW)
    actual = P.split_fields(raw, ["c", "a"], "csv", keep=["a", "b", "c"])
    assertDataFrameEqual(actual, spark.createDataFrame([("3,1", "f", "1", None, "3", [])], FIELDS))


def test_csv_other_delimiter(spark):
    raw = spark.createDataFrame([("1;2;3", "f")], RAW)
    assertDataFrameEqual(P.split_fields(raw, ["a", "b", "c"], "csv", ";"),
                         spark.createDataFrame([("1;2;3", "f", "1", "2", "3", [])], FIELDS))


def test_json_objects_parse_by_name_and_non_objects_are_malformed(spark):
    raw = spark.createDataFrame([('{"c": 3, "a": "x"}', "f"), ("[1, 2]", "f"), ("not json", "f")], RAW)
    expected = spark.createDataFrame([('{"c": 3, "a": "x"}', "f", "x", None, "3", []),
                                      ("[1, 2]", "f", None, None, None, ["malformed"]),
                                      ("not json", "f", None, None, None, ["malformed"])], FIELDS)
    assertDataFrameEqual(P.split_fields(raw, ["a", "b", "c"], "json"), expected)


def test_replacement_characters_are_an_encoding_error(spark):
    raw = spark.createDataFrame([("1,b\ufffdb,3", "f")], RAW)
    actual = P.split_fields(raw, ["a", "b", "c"], "csv")
    assertDataFrameEqual(actual, spark.createDataFrame([("1,b\ufffdb,3", "f", "1", "b\ufffdb", "3", ["encoding"])],
                                                       FIELDS))


def test_casts_are_strict_and_name_the_column(spark):
    actual = P.cast_columns(strings(spark, [("12.5", "1e3", "2013-01-01T10:00:00Z", "ann")]), TYPED, ["NA"])
    assert actual.schema == spark.createDataFrame([], TYPED_SCHEMA).schema
    expected = spark.createDataFrame([("r", "f", None, 1000.0, "2013-01-01 10:00:00", "ann", ["type:id"])],
                                     TYPED_SCHEMA.replace("when timestamp", "when string"))
    assertDataFrameEqual(actual.withColumn("when", F.col("when").cast("string")), expected)


def test_null_values_and_empty_strings_are_missing_not_errors(spark):
    actual = P.cast_columns(strings(spark, [("NA", "", None, "NA")]), TYPED, ["NA"])
    assertDataFrameEqual(actual, spark.createDataFrame([("r", "f", None, None, None, None, [])], TYPED_SCHEMA))


def test_surrounding_spaces_are_trimmed_when_asked(spark):
    actual = P.cast_columns(strings(spark, [(" 7 ", " NA ", "bad time", " x ")]), TYPED, ["NA"])
    expected = spark.createDataFrame([("r", "f", 7, None, None, "x", ["type:when"])], TYPED_SCHEMA)
    assertDataFrameEqual(actual, expected)


def test_non_finite_numbers_convert_for_the_finite_rule(spark):
    actual = P.cast_columns(strings(spark, [("1", "NaN", None, "n"), ("2", "-Infinity", None, "n")]), TYPED, [])
    assertDataFrameEqual(actual.select("id", F.isnan("amount").alias("nan"), (F.abs("amount") == float("inf"))
                                       .alias("infinite"), "_parse_errors"),
                         spark.createDataFrame([(1, True, False, []), (2, False, True, [])],
                                               "id int, nan boolean, infinite boolean, _parse_errors array<string>"))


# --- sources: files to raw records, per format ----------------------------------------------------

COLUMNS = [("id", "int"), ("name", "string")]
PARSED = "_raw string, _source_file string, id int, name string, _parse_errors array<string>"


def parsed(spark, tmp_path: Path, source: SourceSpec):
    return read_parsed(spark, source, COLUMNS, Lake.at(tmp_path / "lake"), tmp_path, False)


def test_csv_header_and_blank_lines_are_not_records(spark, tmp_path):
    path = tmp_path / "a.csv"
    path.write_text("id,name\n1,ann\n\n2,bob\n")
    uri = path.resolve().as_uri()
    assertDataFrameEqual(parsed(spark, tmp_path, SourceSpec(format="csv", path=str(path))),
                         spark.createDataFrame([("1,ann", uri, 1, "ann", []), ("2,bob", uri, 2, "bob", [])], PARSED))


def test_zipped_csv_is_read_from_its_extracted_member(spark, tmp_path):
    with zipfile.ZipFile(tmp_path / "a.zip", "w") as zf:
        zf.writestr("a.csv", "id,name\n1,ann\n")
    actual = parsed(spark, tmp_path, SourceSpec(format="csv", path=str(tmp_path / "a.zip")))
    assert actual.first()["_source_file"].endswith("/a.csv")
    assertDataFrameEqual(actual.drop("_source_file"),
                         spark.createDataFrame([("1,ann", 1, "ann", [])],
                                               "_raw string, id int, name string, _parse_errors array<string>"))


def test_a_glob_reads_every_matching_file(spark, tmp_path):
    for i in (1, 2):
        (tmp_path / f"part{i}.csv").write_text(f"id,name\n{i},n{i}\n")
    actual = parsed(spark, tmp_path, SourceSpec(format="csv", path="part*.csv")).select("id", "name")
    assertDataFrameEqual(actual, spark.createDataFrame([(1, "n1"), (2, "n2")], "id int, name string"))


def test_json_lines_with_a_bad_type_keep_the_raw_record(spark, tmp_path):
    path = tmp_path / "a.json"
    path.write_text('{"id": 1, "name": "ann"}\n{"id": "x1", "name": "bob"}\n')
    uri = path.resolve().as_uri()
    expected = spark.createDataFrame([('{"id": 1, "name": "ann"}', uri, 1, "ann", []),
                                      ('{"id": "x1", "name": "bob"}', uri, None, "bob", ["type:id"])], PARSED)
    assertDataFrameEqual(parsed(spark, tmp_path, SourceSpec(format="json", path=str(path))), expected)


def test_parquet_rows_become_json_records(spark, tmp_path):
    pq.write_table(pa.table({"id": pa.array([1, 2], pa.int32()), "name": ["ann", None]}), tmp_path / "a.parquet")
    actual = parsed(spark, tmp_path, SourceSpec(format="parquet", path=str(tmp_path / "a.parquet")))
    expected = spark.createDataFrame([('{"id":1,"name":"ann"}', 1, "ann", []), ('{"id":2}', 2, None, [])],
                                     "_raw string, id int, name string, _parse_errors array<string>")
    assertDataFrameEqual(actual.drop("_source_file"), expected)


def test_latin1_source_is_decoded_as_declared(spark, tmp_path):
    path = tmp_path / "a.csv"
    path.write_bytes("id,name\n1,José\n".encode("latin-1"))
    actual = parsed(spark, tmp_path, SourceSpec(format="csv", path=str(path), encoding="ISO-8859-1"))
    assertDataFrameEqual(actual.select("_raw", "name", "_parse_errors"),
                         spark.createDataFrame([("1,José", "José", [])],
                                               "_raw string, name string, _parse_errors array<string>"))


def test_parquet_with_a_changed_column_type_is_refused(tmp_path):
    pq.write_table(pa.table({"id": ["1"], "name": ["ann"]}), tmp_path / "a.parquet")
    with pytest.raises(sources.SourceError, match="column id is string in the file, declared int"):
        sources.check_parquet_schemas([tmp_path / "a.parquet"], COLUMNS, allow_evolution=False)


def test_json_with_an_undeclared_field_is_refused(tmp_path):
    (tmp_path / "a.json").write_text('{"id": 1, "name": "ann", "extra": 2}\n')
    with pytest.raises(sources.SourceError, match=r"undeclared fields \['extra'\]"):
        sources.check_json_fields([tmp_path / "a.json"], ["id", "name"], "UTF-8", allow_evolution=False)


def test_csv_header_with_a_byte_order_mark_is_not_a_schema_change(tmp_path):
    (tmp_path / "a.csv").write_bytes("\ufeffid,name\n1,ann\n".encode("utf-8"))
    groups = sources.check_csv_headers([tmp_path / "a.csv"], ["id", "name"], ",", "UTF-8", False)
    assert groups == [sources.SourceGroup(("id", "name"), (tmp_path / "a.csv",))]
