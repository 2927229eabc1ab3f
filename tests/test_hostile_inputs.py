"""Hostile inputs for the ingest job: exact accounting, or a clear error that names the file.

Each case writes a small CSV, ingests it with the real stage into a fresh lake, and checks that
every data line is clean, quarantined or a counted duplicate (nothing lost), that the clean table
holds each key once (nothing duplicated), or that the job refused with a message naming the file
and left no table behind. Each case adds a row to the reliability report.
"""
from __future__ import annotations

from pathlib import Path

import pytest
from pyspark.sql import functions as F

from shardlake import delta_io
from shardlake.config import DatasetSpec
from shardlake.lake import Lake
from shardlake.sources import SourceError
from shardlake.stages.ingest import run_ingest

pytestmark = pytest.mark.reliability
HEADER = "id,name,amount,category,code"


def dataset(path: Path, **extra) -> DatasetSpec:
    """A small dataset declaration in the shape of conf/datasets/*.yaml."""
    return DatasetSpec.model_validate({
        "name": "hostile",
        "source": {"format": "csv", "path": str(path)},
        "columns": [{"name": "id", "type": "int"}, {"name": "name", "type": "string"},
                    {"name": "amount", "type": "double"}, {"name": "category", "type": "string"},
                    {"name": "code", "type": "string"}],
        "key": ["id"],
        "rules": {"required": ["amount"], "ranges": {"amount": {"min": 0, "max": 1000}},
                  "allowed": {"category": ["a", "b", "c"]}, "patterns": {"code": "^[A-Z]{3}$"},
                  "finite": ["amount"]},
        "shards": 2,
        "features": {"numeric": ["amount"], "categorical": ["category"]},
        "label": {"column": "amount", "kind": "regression"},
        **extra,
    })


def write(tmp_path: Path, lines: list[str], data: bytes | None = None) -> Path:
    path = tmp_path / "input.csv"
    if data is not None:
        path.write_bytes(data)
    else:
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def ingest_and_account(spark, tmp_path: Path, lines: list[str], reliability, case: str, data: bytes | None = None,
                       **extra):
    """Ingest, then return (report, clean rows, quarantined rows); record lost/duplicated rows."""
    path = write(tmp_path, lines, data)
    lake = Lake.at(tmp_path / "lake")
    report = run_ingest(spark, lake, dataset(path, **extra), f"hostile-{case}", tmp_path)
    clean = delta_io.read_version(spark, lake.table("hostile", "clean"))
    quarantine = delta_io.read_version(spark, lake.table("hostile", "quarantine"))
    data_lines = (len(data.decode("utf-8", "replace").strip().splitlines()) - 1) if data is not None else len(lines) - 1
    clean_rows, quarantined = clean.count(), quarantine.count()
    lost = data_lines - (clean_rows + quarantined + report.duplicates_removed)
    duplicated = clean_rows - clean.select("id").distinct().count()
    reliability.record(case, f"accounted: {clean_rows} clean, {quarantined} quarantined, "
                             f"{report.duplicates_removed} duplicates", lost, duplicated)
    return report, clean, quarantine, lost, duplicated


def rules_of(quarantine, fragment: str) -> list[list[str]]:
    return [list(r["rules"]) for r in quarantine.where(F.col("raw").contains(fragment)).collect()]


def test_truncated_and_overlong_lines_are_quarantined_as_malformed(spark, tmp_path, reliability):
    lines = [HEADER, "1,ann,10.5,a,ABC", "2,bob,11", "3,cy,12,b,DEF,extra", "4,dee,13,c,GHI"]
    report, clean, quarantine, lost, duplicated = ingest_and_account(spark, tmp_path, lines, reliability,
                                                                     "truncated/overlong CSV lines")
    assert (lost, duplicated) == (0, 0)
    assert rules_of(quarantine, "2,bob") == [["malformed"]] and rules_of(quarantine, "extra") == [["malformed"]]
    assert sorted(r["id"] for r in clean.collect()) == [1, 4]


def test_unbalanced_quote_is_quarantined_not_lost(spark, tmp_path, reliability):
    lines = [HEADER, '1,"ann,10.5,a,ABC', "2,bob,11.0,b,DEF"]
    _, clean, quarantine, lost, duplicated = ingest_and_account(spark, tmp_path, lines, reliability,
                                                                "unbalanced quote")
    assert (lost, duplicated) == (0, 0)
    assert [r["id"] for r in clean.collect()] == [2]
    assert quarantine.count() == 1


def test_wrong_types_are_quarantined_with_the_column_named(spark, tmp_path, reliability):
    lines = [HEADER, "x1,ann,10.5,a,ABC", "2,bob,ten,b,DEF", "3,cy,12.0,c,GHI"]
    _, clean, quarantine, lost, duplicated = ingest_and_account(spark, tmp_path, lines, reliability, "wrong types")
    assert (lost, duplicated) == (0, 0)
    assert rules_of(quarantine, "x1,") == [["type:id"]] and rules_of(quarantine, "ten") == [["type:amount"]]


def test_null_keys_are_quarantined(spark, tmp_path, reliability):
    lines = [HEADER, ",ann,10.5,a,ABC", "NA,bob,11.0,b,DEF", "3,cy,12.0,c,GHI"]
    _, clean, quarantine, lost, duplicated = ingest_and_account(spark, tmp_path, lines, reliability, "null keys")
    assert (lost, duplicated) == (0, 0)
    assert [r["id"] for r in clean.collect()] == [3]
    assert all("required:id" in rules for rules in (list(r["rules"]) for r in quarantine.collect()))


def test_exact_copies_are_counted_and_conflicting_rows_of_a_key_quarantined(spark, tmp_path, reliability):
    lines = [HEADER, "1,ann,10.5,a,ABC", "1,ann,10.5,a,ABC", "1,ann,99.0,a,ABC", "2,bob,11.0,b,DEF"]
    report, clean, quarantine, lost, duplicated = ingest_and_account(spark, tmp_path, lines, reliability,
                                                                     "exact and key duplicates")
    assert (lost, duplicated) == (0, 0)
    assert (report.duplicates_removed, report.conflicts) == (1, 2)
    assert sorted(r["id"] for r in clean.collect()) == [2]
    assert sorted((r["raw"], tuple(r["rules"])) for r in quarantine.collect()) == [
        ("1,ann,10.5,a,ABC", ("key_conflict",)), ("1,ann,99.0,a,ABC", ("key_conflict",))]


def test_out_of_range_and_non_finite_numbers_are_quarantined(spark, tmp_path, reliability):
    lines = [HEADER, "1,ann,-5,a,ABC", "2,bob,1e9,b,DEF", "3,cy,NaN,c,GHI", "4,dee,Infinity,a,JKL",
             "5,eve,12.0,b,MNO"]
    _, clean, quarantine, lost, duplicated = ingest_and_account(spark, tmp_path, lines, reliability,
                                                                "out-of-range and non-finite numbers")
    assert (lost, duplicated) == (0, 0)
    assert [r["id"] for r in clean.collect()] == [5]
    assert quarantine.count() == 4


def test_huge_strings_are_kept_intact(spark, tmp_path, reliability):
    huge = "z" * 1_000_000
    lines = [HEADER, f"1,{huge},10.5,a,ABC", f"2,bob,11.0,b,{huge}"]
    _, clean, quarantine, lost, duplicated = ingest_and_account(spark, tmp_path, lines, reliability,
                                                                "huge strings (1 MB fields)")
    assert (lost, duplicated) == (0, 0)
    assert [len(r["name"]) for r in clean.collect()] == [1_000_000]
    assert [len(r["raw"]) > 1_000_000 for r in quarantine.collect()] == [True]


def test_wrong_encoding_is_quarantined_as_encoding(spark, tmp_path, reliability):
    data = (HEADER + "\n1,ann,10.5,a,ABC\n2,b\xf6b,11.0,b,DEF\n").encode("latin-1")
    _, clean, quarantine, lost, duplicated = ingest_and_account(spark, tmp_path, [], reliability,
                                                                "latin-1 bytes in a UTF-8 source", data=data)
    assert (lost, duplicated) == (0, 0)
    assert [r["id"] for r in clean.collect()] == [1]
    assert [list(r["rules"]) for r in quarantine.collect()] == [["encoding"]]


def test_empty_file_ingests_nothing_and_says_so(spark, tmp_path, reliability):
    path = write(tmp_path, [], data=b"")
    lake = Lake.at(tmp_path / "lake")
    report = run_ingest(spark, lake, dataset(path), "hostile-empty", tmp_path)
    assert (report.rows_read, report.clean_rows, report.quarantined) == (0, 0, 0)
    reliability.record("empty file", "accounted: 0 rows read", 0, 0)


def _refused(spark, tmp_path, spec, reliability, case: str, expected: str) -> str:
    lake = Lake.at(tmp_path / "lake")
    with pytest.raises((SourceError, ValueError)) as caught:
        run_ingest(spark, lake, spec, f"hostile-{case}", tmp_path)
    assert not delta_io.table_exists(spark, lake.table("hostile", "clean"))
    reliability.record(case, f"refused: {str(caught.value)[:70]}", 0, 0)
    assert expected in str(caught.value)
    return str(caught.value)


def test_missing_file_is_refused_naming_it(spark, tmp_path, reliability):
    message = _refused(spark, tmp_path, dataset(tmp_path / "nowhere.csv"), reliability, "missing file", "nowhere.csv")
    assert "not found" in message


def test_wrong_delimiter_is_refused_naming_the_file(spark, tmp_path, reliability):
    path = write(tmp_path, [HEADER.replace(",", ";"), "1;ann;10.5;a;ABC"])
    _refused(spark, tmp_path, dataset(path), reliability, "wrong delimiter", str(path))


def test_schema_change_is_refused_naming_the_columns(spark, tmp_path, reliability):
    path = write(tmp_path, ["id,name,amount,category,code,new_col", "1,ann,10.5,a,ABC,x"])
    message = _refused(spark, tmp_path, dataset(path), reliability, "schema change (new column)", str(path))
    assert "new_col" in message
