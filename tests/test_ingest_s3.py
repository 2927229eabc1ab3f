"""The ingest job from s3a:// sources into a lake on a real S3 server: tables opened with delta-rs from the server."""
from __future__ import annotations

import os

import pyarrow.fs as pafs
import pytest

from jobs import ingest as ingest_job

from ingest_helpers import CUSTOMERS, HEADER, LINES, SALT, TOY_YAML, toy_config, write_csv

CLEAN_IDS = sorted({int(line.split(",")[0]) for line, fate in LINES if fate.startswith("clean")})


@pytest.fixture(scope="module")
def ingested(s3_server, spark, tmp_path_factory):
    """One run of the ingest job from s3a:// sources (the orders in two objects, the join source in a
    third) into an s3a:// lake on the test server: (bucket, the job's args)."""
    bucket = s3_server.bucket("ingest")
    s3_server.point(spark)
    fs = s3_server.filesystem()
    lines = [line for line, _ in LINES]
    for name, part in (("a.csv", lines[:7]), ("b.csv", lines[7:])):
        with fs.open_output_stream(f"{bucket}/landing/{name}") as out:
            out.write(("\n".join([HEADER, *part]) + "\n").encode())
    with fs.open_output_stream(f"{bucket}/ref/customers.csv") as out:
        out.write(("\n".join(CUSTOMERS) + "\n").encode())
    folder = tmp_path_factory.mktemp("s3-ingest")
    (folder / "toy.yaml").write_text(TOY_YAML.format(source=f"s3a://{bucket}/landing/*.csv",
                                                     customers=f"s3a://{bucket}/ref/customers.csv", salt=SALT))
    args = ["--conf", "conf/base.yaml", f"dataset={folder / 'toy.yaml'}", f"lake.root=s3a://{bucket}/lake",
            *s3_server.overrides()]
    assert ingest_job.main(["--run-id", "s3-run", *args]) == 0
    return bucket, args


def _read(server, bucket: str, table: str, columns: list[str]):
    return server.read_delta(f"s3://{bucket}/lake/toy/{table}", columns)


def test_the_clean_table_on_s3_holds_the_clean_rows(ingested, s3_server):
    bucket, _ = ingested
    clean = _read(s3_server, bucket, "clean", ["order_id"])
    assert sorted(clean.column("order_id").to_pylist()) == CLEAN_IDS


def test_the_quarantine_on_s3_holds_the_rejected_records(ingested, s3_server):
    bucket, _ = ingested
    raw = _read(s3_server, bucket, "quarantine", ["raw"]).column("raw").to_pylist()
    assert sorted(raw) == sorted(line for line, fate in LINES if not fate.startswith(("clean", "exact duplicate")))


def test_the_run_leaves_no_staging_objects_on_the_server(ingested, s3_server):
    bucket, _ = ingested
    selector = pafs.FileSelector(f"{bucket}/lake/_staging", recursive=True, allow_not_found=True)
    assert [i.path for i in s3_server.filesystem().get_file_info(selector) if i.type == pafs.FileType.File] == []


def test_a_rerun_on_s3_commits_nothing(ingested, s3_server):
    bucket, args = ingested
    before = s3_server.delta_table(f"s3://{bucket}/lake/toy/clean").version()
    assert ingest_job.main(["--run-id", "s3-rerun", *args]) == 0
    assert s3_server.delta_table(f"s3://{bucket}/lake/toy/clean").version() == before


def test_a_missing_bucket_stops_the_job_with_one_line_before_spark(s3_server, tmp_path, capsys):
    source = write_csv(tmp_path / "orders.csv", HEADER, [LINES[0][0]])
    toy_config(tmp_path, source, tmp_path / "unused-lake")
    args = ["--conf", "conf/base.yaml", f"dataset={tmp_path / 'toy.yaml'}", "lake.root=s3a://no-such-bucket/lake",
            *s3_server.overrides()]
    with pytest.raises(SystemExit) as stopped:
        ingest_job.main(args)
    err = capsys.readouterr().err
    assert stopped.value.code == 2
    assert err.startswith("storage error: s3a://no-such-bucket/lake: the bucket 'no-such-bucket' does not exist")
    assert "Traceback" not in err


def test_no_object_the_run_wrote_holds_the_secret_key_from_the_environment(ingested, s3_server):
    bucket, _ = ingested
    secret = os.environ["AWS_SECRET_ACCESS_KEY"].encode()
    fs = s3_server.filesystem()
    written = [i.path for i in fs.get_file_info(pafs.FileSelector(bucket, recursive=True))
               if i.type == pafs.FileType.File]
    assert written and not [path for path in written if secret in fs.open_input_stream(path).read()]
