"""The typed CSV parse gives exactly what the strict string-then-cast parse gives, on clean and dirty records."""
from __future__ import annotations

import datetime as dt

import pytest
from pyspark.testing import assertDataFrameEqual

from shardlake.transforms import parse as P
from shardlake.transforms.parse_csv import parse_typed

COLUMNS = [("a", "int"), ("b", "double"), ("t", "timestamp"), ("s", "string"), ("d", "date"), ("k", "boolean"),
           ("g", "bigint")]
NAMES = [name for name, _ in COLUMNS]
RECORDS = "_raw string, _source_file string, _record_kind string"
# Every way a field can be odd: spaces, quotes, null texts, wrong types, a field count that differs,
# an unclosed quote, bytes already replaced as undecodable, Java-only number forms, a blank and a header line.
LINES = [
    ("1,2.5,2013-01-01T10:00:00Z,x,2020-01-02,true,5", "record"),
    (" 7 , 1e3 ,2013-01-01 10:00:00, y ,2020-1-2,false,+9", "record"),
    ("NA,NA,NA,NA,NA,NA,NA", "record"),
    (",,,,,,", "record"),
    ('"","","","","","",""', "record"),
    ("12.5,far,bad,z,bad,maybe,1.0", "record"),
    ("1,2", "record"),
    ("1,2,3,4,5,6,7,8", "record"),
    ('"1,2,3,4,5,6,7', "record"),
    ("N/A,N/A,N/A,N/A,N/A,N/A,N/A", "record"),
    ('1,NaN,2013-01-01T10:00:00Z,"q""uote",2020-01-02,TRUE,-0', "record"),
    ("1,Infinity,,,,,", "record"),
    ("1,-Inf,,,,,", "record"),
    ("1,inf,,,,,", "record"),
    (' "2" ,3,,,,,', "record"),
    ('" 3 ",4,,,,,', "record"),
    ("1,1d,,,,,", "record"),
    ("a\ufffd,1,,,,,", "record"),
    ("", "blank"),
    ("a,b,t,s,d,k,g", "header"),
]


def records(spark):
    return spark.createDataFrame([(line, "f.csv", kind) for line, kind in LINES], RECORDS)


@pytest.mark.parametrize("null_values", [["", "NA"], ["NA", "N/A"], []])
def test_typed_parse_equals_the_strict_parse(spark, null_values):
    strict = P.cast_columns(P.split_fields(records(spark), NAMES, "csv"), COLUMNS, null_values, trim=False)
    assertDataFrameEqual(parse_typed(records(spark), NAMES, COLUMNS, ",", null_values), strict)


def test_typed_parse_values_and_errors(spark):
    lines = spark.createDataFrame([("1,2.5,2013-01-01T10:00:00Z,NA,2020-01-02,true,5", "f.csv", "record"),
                                   ("x,2.5,,,,,", "f.csv", "record"), ("1,2", "f.csv", "record")], RECORDS)
    expected = spark.createDataFrame([
        ("1,2.5,2013-01-01T10:00:00Z,NA,2020-01-02,true,5", "f.csv", "record", 1, 2.5,
         dt.datetime(2013, 1, 1, 10), None, dt.date(2020, 1, 2), True, 5, []),
        ("x,2.5,,,,,", "f.csv", "record", None, 2.5, None, None, None, None, None, ["type:a"]),
        # A malformed record keeps the values it has; the error decides its fate, not them.
        ("1,2", "f.csv", "record", 1, 2.0, None, None, None, None, None, ["malformed"]),
    ], f"{RECORDS}, a int, b double, t timestamp, s string, d date, k boolean, g bigint, _parse_errors array<string>")
    assertDataFrameEqual(parse_typed(lines, NAMES, COLUMNS, ",", ["", "NA"]), expected)
