"""Prometheus metrics of the jobs (shardlake.ops.prometheus): report -> exposition text, the textfile, the push.

The report -> registry functions are checked against exposition text and samples written out by
hand; the push path end to end with real servers (Debian's Pushgateway and Prometheus on loopback)
and the ingest job: Prometheus, scraping the gateway, returns the run's counts exactly. The alert
rules are checked and unit-tested by promtool.
"""
from __future__ import annotations

import json
import logging
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from jobs import ingest as ingest_job
from shardlake.config import PrometheusSettings
from shardlake.folders import Folder
from shardlake.lake import Lake
from shardlake.ops import prometheus as P
from shardlake.stages.ingest_report import IngestReport

from cluster import free_port
from ingest_helpers import HEADER, LINES, toy_config, write_csv
from prometheus_servers import PROMTOOL, PrometheusServers

REPO = Path(__file__).resolve().parent.parent
ALERTS = REPO / "conf" / "prometheus"
FINISHED = 1765000000.0


def samples(registry_or_text) -> dict[tuple, float]:
    """{(name, sorted labels): value} of a registry or of exposition text, as a reader parses it."""
    text = registry_or_text if isinstance(registry_or_text, str) else generate_latest(registry_or_text).decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def key(name: str, **labels: str) -> tuple:
    return (name, tuple(sorted(labels.items())))


def test_ingest_metrics_are_the_reports_counts_in_the_exposition_format():
    report = IngestReport(run_id="ingest-toy-2024-01-05", dataset="toy", rows_read=10, clean_rows=6, quarantined=3,
                          duplicates_removed=1, rule_counts={"type:amount": 1, "range:amount": 2}, table_version=7,
                          quarantine_version=None, seconds=4.5)
    labels = 'dataset="toy",job="ingest"'
    expected = "".join(f"# HELP shardlake_{name} {help_text}\n# TYPE shardlake_{name} gauge\n" +
                       "".join(f"shardlake_{name}{{{labels}{extra}}} {value}\n" for extra, value in rows)
                       for name, help_text, rows in [
        ("ingest_rows_read", "records the run read from its source", [("", "10.0")]),
        ("ingest_rows_clean", "rows the run wrote to the clean table", [("", "6.0")]),
        ("ingest_rows_quarantined", "rows the run sent to the quarantine table", [("", "3.0")]),
        ("ingest_rows_duplicate", "exact duplicate rows the run dropped", [("", "1.0")]),
        ("ingest_rows_quarantined_by_rule",
         "quarantined rows that broke a rule (a row breaking two counts under each)",
         [(',rule="range:amount"', "2.0"), (',rule="type:amount"', "1.0")]),
        ("table_version", "Delta table version the job wrote or read", [(',table="clean"', "7.0")]),
        ("stage_seconds", "wall-clock seconds a stage of the job took", [(',stage="ingest"', "4.5")]),
        ("last_success_timestamp_seconds", "Unix time the job last finished successfully", [("", "1.765e+09")]),
    ])
    assert generate_latest(P.ingest_metrics(report, FINISHED)).decode() == expected


def test_train_metrics_carry_each_epochs_throughput_loss_and_validation_and_the_best_and_test_metrics():
    history = [{"epoch": 0, "train_loss": 0.7, "validation": {"auc": 0.6, "accuracy": 0.55},
                "samples_per_second": 1000.0, "seconds": 2.0},
               {"epoch": 1, "train_loss": 0.5, "validation": {"auc": 0.7, "accuracy": 0.65},
                "samples_per_second": 3000.0, "seconds": 1.0}]
    card = {"dataset": "flights", "model_version": "m1", "table_version": 4, "metric_name": "auc",
            "validation_metric": 0.7, "best_epoch": 1, "epochs_run": 2, "history": history,
            "test_metrics": {"auc": 0.68, "accuracy": 0.6}, "restarts": 1, "seconds": 12.5}
    base = {"job": "train", "dataset": "flights"}
    expected = {
        key("shardlake_train_epoch_samples_per_second", **base, epoch="0"): 1000.0,
        key("shardlake_train_epoch_samples_per_second", **base, epoch="1"): 3000.0,
        key("shardlake_train_epoch_loss", **base, epoch="0"): 0.7,
        key("shardlake_train_epoch_loss", **base, epoch="1"): 0.5,
        key("shardlake_train_epoch_validation", **base, epoch="0", metric="auc"): 0.6,
        key("shardlake_train_epoch_validation", **base, epoch="0", metric="accuracy"): 0.55,
        key("shardlake_train_epoch_validation", **base, epoch="1", metric="auc"): 0.7,
        key("shardlake_train_epoch_validation", **base, epoch="1", metric="accuracy"): 0.65,
        key("shardlake_train_samples_per_second", **base): 2000.0,
        key("shardlake_train_validation_metric", **base, metric="auc"): 0.7,
        key("shardlake_train_test_metric", **base, metric="auc"): 0.68,
        key("shardlake_train_test_metric", **base, metric="accuracy"): 0.6,
        key("shardlake_train_epochs_run", **base): 2.0,
        key("shardlake_train_restarts", **base): 1.0,
        key("shardlake_table_version", **base, table="clean"): 4.0,
        key("shardlake_stage_seconds", **base, stage="train"): 12.5,
        key("shardlake_last_success_timestamp_seconds", **base): FINISHED,
    }
    assert samples(P.train_metrics(card, FINISHED)) == expected


def test_promote_metrics_say_whether_the_gate_promoted_and_both_models_metric():
    decision = SimpleNamespace(model_version="m2", metric_name="rmse", table_version=5, promoted=False,
                               candidate_metric=3.5, champion_metric=3.0)
    base = {"job": "promote", "dataset": "toy"}
    assert samples(P.promote_metrics(decision, "toy", 2.25, FINISHED)) == {
        key("shardlake_promote_promoted", **base): 0.0,
        key("shardlake_promote_candidate_metric", **base, metric="rmse"): 3.5,
        key("shardlake_promote_champion_metric", **base, metric="rmse"): 3.0,
        key("shardlake_table_version", **base, table="clean"): 5.0,
        key("shardlake_stage_seconds", **base, stage="promote"): 2.25,
        key("shardlake_last_success_timestamp_seconds", **base): FINISHED,
    }


def test_infer_metrics_flag_drift_per_metric_and_per_feature():
    comparison = {"new_rows": {"auc": {"drifted": True}, "accuracy": {"drifted": False}},
                  "distributions": {"dep_delay": {"psi": 0.4, "drifted": True}, "score": {"psi": 0.01, "drifted": False}},
                  "sanity": {"auc": {"failed": False}}}
    report = SimpleNamespace(rows_scored=5000, seconds=2.5, comparison=comparison, source_version=3,
                             predictions_version=8)
    base = {"job": "infer", "dataset": "flights"}
    assert samples(P.infer_metrics(report, "flights", FINISHED)) == {
        key("shardlake_infer_rows_scored", **base): 5000.0,
        key("shardlake_infer_rows_per_second", **base): 2000.0,
        key("shardlake_infer_drift", **base, metric="auc"): 1.0,
        key("shardlake_infer_drift", **base, metric="accuracy"): 0.0,
        key("shardlake_infer_distribution_drift", **base, feature="dep_delay"): 1.0,
        key("shardlake_infer_distribution_drift", **base, feature="score"): 0.0,
        key("shardlake_infer_sanity_failed", **base, metric="auc"): 0.0,
        key("shardlake_table_version", **base, table="clean"): 3.0,
        key("shardlake_table_version", **base, table="predictions"): 8.0,
        key("shardlake_stage_seconds", **base, stage="infer"): 2.5,
        key("shardlake_last_success_timestamp_seconds", **base): FINISHED,
    }


def test_a_push_to_a_closed_port_is_one_warning_without_credentials_and_the_textfile_is_still_written(
        tmp_path, caplog):
    registry = P.pipeline_metrics("toy", {"ingest": 1.5, "train": 2.0}, FINISHED)
    url = f"http://operator:s3cret@127.0.0.1:{free_port()}"
    with caplog.at_level(logging.WARNING):
        written = P.export(registry, tmp_path / "run", PrometheusSettings(pushgateway_url=url, push_timeout_s=2))
    warnings = [r.getMessage() for r in caplog.records if r.name == P.__name__]
    assert len(warnings) == 1 and "push of job 'pipeline' dataset 'toy'" in warnings[0], warnings
    assert "s3cret" not in caplog.text and "operator" not in caplog.text
    assert written == str(tmp_path / "run" / "metrics.prom")
    assert samples((tmp_path / "run" / "metrics.prom").read_text()) == samples(registry)


def test_the_textfile_of_a_lake_on_s3_is_an_object_in_the_runs_area(s3_server):
    lake = Lake.at(f"s3a://{s3_server.bucket('metrics')}/lake", s3_server.settings)
    report = IngestReport(run_id="nightly 2024/01/05", dataset="toy", rows_read=3, clean_rows=3, seconds=1.0)
    registry = P.ingest_metrics(report, FINISHED)
    written = P.export(registry, P.run_folder(lake, "toy", "ingest", report.run_id), PrometheusSettings())
    assert written == f"{lake.root}/_runs/toy/ingest/nightly_2024_01_05/metrics.prom"
    assert samples(Folder(written.rsplit("/", 1)[0], s3_server.settings).read_text("metrics.prom")) == samples(registry)


def test_the_alert_rules_pass_promtool_check():
    checked = subprocess.run([PROMTOOL, "check", "rules", str(ALERTS / "alerts.yml")], capture_output=True,
                             text=True, timeout=60)
    assert checked.returncode == 0 and "SUCCESS: 4 rules found" in checked.stdout, checked.stdout + checked.stderr


def test_the_alert_rules_fire_as_their_promtool_unit_tests_expect():
    # Stale pipeline, quarantine rate, drift and slow training: each fires when it should and only then.
    tested = subprocess.run([PROMTOOL, "test", "rules", "alerts_test.yml"], cwd=ALERTS, capture_output=True,
                            text=True, timeout=120)
    assert tested.returncode == 0 and "SUCCESS" in tested.stdout, tested.stdout + tested.stderr


def _ingest_args(tmp_path: Path, gateway: str, *overrides: str) -> list[str]:
    source = write_csv(tmp_path / "orders.csv", HEADER, [line for line, _ in LINES])
    toy_config(tmp_path, source, tmp_path / "lake")
    return ["--conf", str(REPO / "conf" / "base.yaml"), f"dataset={tmp_path / 'toy.yaml'}",
            f"lake.root={tmp_path / 'lake'}", f"monitoring.pushgateway_url={gateway}", *overrides,
            "--run-id", "ingest-metrics", "--result-file", str(tmp_path / "result.json")]


@pytest.fixture(scope="module")
def pushed_ingest(spark, tmp_path_factory):
    """The ingest job run once on the toy lines, pushing to a real Pushgateway that a real Prometheus scrapes."""
    tmp_path = tmp_path_factory.mktemp("prometheus-ingest")
    with PrometheusServers() as servers:
        assert ingest_job.main(_ingest_args(tmp_path, servers.gateway)) == 0
        yield SimpleNamespace(servers=servers, folder=tmp_path,
                              report=json.loads((tmp_path / "result.json").read_text()))


def test_prometheus_returns_the_pushed_ingests_rows_read_and_clean_exactly(spark, pushed_ingest):
    servers = pushed_ingest.servers
    read = servers.wait_for('shardlake_ingest_rows_read{job="ingest",dataset="toy"}')
    clean = servers.wait_for('shardlake_ingest_rows_clean{job="ingest",dataset="toy"}')
    row = (spark.read.format("delta").load(str(pushed_ingest.folder / "lake" / "toy" / "ingest_runs"))
           .where("run_id = 'ingest-metrics'").first())
    assert [float(r["value"][1]) for r in read] == [row["rows_read"]] == [len(LINES)]
    assert [float(r["value"][1]) for r in clean] == [row["clean_rows"]] == [
        sum(fate.startswith("clean") for _, fate in LINES)]


def test_the_ingest_writes_its_metrics_textfile_into_its_run_folder(pushed_ingest):
    report = pushed_ingest.report
    text = (pushed_ingest.folder / "lake" / "_runs" / "toy" / "ingest" / "ingest-metrics" / "metrics.prom").read_text()
    found = samples(text)
    base = {"job": "ingest", "dataset": "toy"}
    assert {k: v for k, v in found.items() if k[0] != "shardlake_last_success_timestamp_seconds"} == {
        key("shardlake_ingest_rows_read", **base): report["rows_read"],
        key("shardlake_ingest_rows_clean", **base): report["clean_rows"],
        key("shardlake_ingest_rows_quarantined", **base): report["quarantined"],
        key("shardlake_ingest_rows_duplicate", **base): report["duplicates_removed"],
        **{key("shardlake_ingest_rows_quarantined_by_rule", **base, rule=rule): count
           for rule, count in report["rule_counts"].items()},
        key("shardlake_table_version", **base, table="clean"): report["table_version"],
        key("shardlake_table_version", **base, table="quarantine"): report["quarantine_version"],
        key("shardlake_stage_seconds", **base, stage="ingest"): report["seconds"],
    }
    assert report["duplicates_removed"] == 1 and report["rule_counts"]["pattern:code"] == 1


@pytest.mark.reliability
def test_an_ingest_whose_gateway_is_closed_succeeds_with_one_warning(spark, tmp_path, caplog):
    gateway = f"http://127.0.0.1:{free_port()}"
    with caplog.at_level(logging.WARNING):
        assert ingest_job.main(_ingest_args(tmp_path, gateway, "monitoring.push_timeout_s=2")) == 0
    warnings = [r.getMessage() for r in caplog.records if r.name == P.__name__]
    assert len(warnings) == 1 and gateway in warnings[0], warnings
    assert (tmp_path / "lake" / "_runs" / "toy" / "ingest" / "ingest-metrics" / "metrics.prom").is_file()
