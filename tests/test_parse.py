"""Parsing with a declared schema: lines to records, each kept with its raw text and why it did not parse."""
from __future__ import annotations

import pytest
from pyspark.sql import functions as F
from pyspark.testing import assertDataFrameEqual

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


# --- the quote grammar: where a record ends ---------------------------------------------------------

@pytest.mark.parametrize(("text", "opens"), [
    ("1,ann", False), ('1,"ann', True), ('1,"ann, jr",3', False), ('1,"say ""hi"""', False), ('1,"say ""hi""', True),
    ("1,5'10\",x", False), ('1,  "ann', True), ('1,"ann"x,"b', True), ('"a\nb",2', False), ("", False),
])
def test_a_quote_is_open_only_when_a_quoted_field_has_not_closed(spark, text, opens):
    df = spark.createDataFrame([(text,)], "t string")
    assert df.select(P.opens_quote(F.col("t"))).first()[0] is opens


@pytest.mark.parametrize(("text", "stays"), [
    ("more text", True), ('end"', False), ('end",2', False), ('still ""quoted""', True), ('end",2,"again', True),
    ("", True), ('"', False),
])
def test_inside_a_quoted_field_a_lone_quote_closes_it(spark, text, stays):
    df = spark.createDataFrame([(text,)], "t string")
    assert df.select(P.stays_quoted(F.col("t"))).first()[0] is stays


def test_the_quote_grammar_follows_the_declared_delimiter(spark):
    # A quote opens a field only right after a delimiter: the other character is just text.
    df = spark.createDataFrame([('1;"a,b', ), ('1,"a;b', )], "t string")
    opens = [P.opens_quote(F.col("t"), delimiter).alias(delimiter) for delimiter in (";", ",")]
    assert [tuple(r) for r in df.select(*opens).collect()] == [(True, False), (False, True)]


# --- stitching lines into records --------------------------------------------------------------------

LINES = "_source_file string, _line_block long, _line_no long, _line string"
RECORDS = "_raw string, _source_file string"


def test_lines_of_a_quoted_newline_are_one_record_with_their_crlf(spark):
    lines = spark.createDataFrame([("f", 0, 0, '1,"a\r'), ("f", 0, 1, 'b"\r'), ("f", 0, 2, "2,c\r")], LINES)
    assertDataFrameEqual(P.stitch_records(lines),
                         spark.createDataFrame([('1,"a\r\nb"', "f"), ("2,c", "f")], RECORDS))


def test_lines_are_stitched_in_file_order_across_blocks(spark):
    lines = spark.createDataFrame([("f", 90, 7, 'end"'), ("f", 0, 1, '1,"start'), ("f", 0, 2, "middle"),
                                   ("g", 0, 3, "1,x")], LINES)
    assertDataFrameEqual(P.stitch_records(lines),
                         spark.createDataFrame([('1,"start\nmiddle\nend"', "f"), ("1,x", "g")], RECORDS))


def test_the_first_line_of_each_file_is_the_header_and_no_record(spark):
    lines = spark.createDataFrame([("f", 0, 5, "id,name"), ("f", 0, 6, "1,a"), ("g", 0, 1, "id,name")], LINES)
    assertDataFrameEqual(P.stitch_records(lines, header=True), spark.createDataFrame([("1,a", "f")], RECORDS))


def test_a_quote_that_never_closes_holds_no_newline(spark):
    # Line 3 opens a quote that no later line closes: it is a record alone, and line 4 is a record.
    lines = spark.createDataFrame([("f", 0, 1, '1,"a'), ("f", 0, 2, 'b",2'), ("f", 0, 3, '3,"open'),
                                   ("f", 0, 4, "4,d")], LINES)
    expected = [('1,"a\nb",2', "f"), ('3,"open', "f"), ("4,d", "f")]
    assertDataFrameEqual(P.stitch_records(lines), spark.createDataFrame(expected, RECORDS))


def test_a_quote_opened_after_one_that_closed_is_stitched_too(spark):
    lines = spark.createDataFrame([("f", 0, 1, '1,"a'), ("f", 0, 2, 'b","c'), ("f", 0, 3, 'd"')], LINES)
    assertDataFrameEqual(P.stitch_records(lines), spark.createDataFrame([('1,"a\nb","c\nd"', "f")], RECORDS))


# --- record kinds ---------------------------------------------------------------------------------------

def test_record_kind_tells_blank_and_header_lines_from_records(spark):
    df = spark.createDataFrame([("",), ("   ",), ("id,name",), ("\ufeffid,name",), ("1,ann",), ("id,names",)],
                               "r string")
    actual = df.select("r", P.record_kind(F.col("r"), F.lit("id,name")).alias("kind"))
    expected = [("", "blank"), ("   ", "blank"), ("id,name", "header"), ("\ufeffid,name", "header"),
                ("1,ann", "record"), ("id,names", "record")]
    assertDataFrameEqual(actual, spark.createDataFrame(expected, "r string, kind string"))


# --- split_fields and cast_columns ------------------------------------------------------------------------

KINDS = "_raw string, _source_file string, _record_kind string"


def test_csv_quote_that_never_closes_is_malformed_even_with_the_right_field_count(spark):
    raw = spark.createDataFrame([('1,"open', "f")], RAW)
    actual = P.split_fields(raw, ["a", "b"], "csv").select("_raw", "_parse_errors")
    assertDataFrameEqual(actual, spark.createDataFrame([('1,"open', ["malformed"])],
                                                       "_raw string, _parse_errors array<string>"))


def test_csv_quoted_newlines_are_part_of_the_field(spark):
    raw = spark.createDataFrame([('1,"x\r\ny","a\nb"', "f")], RAW)
    expected = spark.createDataFrame([('1,"x\r\ny","a\nb"', "f", "1", "x\r\ny", "a\nb", [])], FIELDS)
    assertDataFrameEqual(P.split_fields(raw, ["a", "b", "c"], "csv"), expected)


def test_blank_and_header_rows_keep_their_kind_with_null_fields_and_no_errors(spark):
    raw = spark.createDataFrame([("", "f", "blank"), ("a,b,c", "f", "header"), ("1,2", "f", "record")], KINDS)
    expected = spark.createDataFrame([("", "f", "blank", None, None, None, []),
                                      ("a,b,c", "f", "header", None, None, None, []),
                                      ("1,2", "f", "record", "1", "2", None, ["malformed"])],
                                     KINDS + ", a string, b string, c string, _parse_errors array<string>")
    assertDataFrameEqual(P.split_fields(raw, ["a", "b", "c"], "csv"), expected)


def test_casting_keeps_the_record_kind(spark):
    strings = spark.createDataFrame([("r", "f", "record", "7", []), ("", "f", "blank", None, [])],
                                    KINDS + ", id string, _parse_errors array<string>")
    actual = P.cast_columns(strings, [("id", "int")], ["NA"])
    assertDataFrameEqual(actual, spark.createDataFrame([("r", "f", "record", 7, []), ("", "f", "blank", None, [])],
                                                       KINDS + ", id int, _parse_errors array<string>"))
