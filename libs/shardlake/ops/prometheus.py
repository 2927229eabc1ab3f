"""Every job's facts as Prometheus metrics: a node-exporter textfile in the run folder, and a Pushgateway push.

Batch jobs end before any scrape, so a job hands its metrics on twice: it always writes them in the
text exposition format as ``metrics.prom`` in its run folder (on the lake's store; a node-exporter
textfile collector, or anything that reads the lake, picks them up), and it pushes them to a
Pushgateway when ``monitoring.pushgateway_url`` is set, grouped by (job, dataset) so a
re-run replaces its own series. Neither is allowed to fail a job: a failure is one warning line.

The ``*_metrics`` functions are pure: a job's report (and the time it finished) in, a fresh
``CollectorRegistry`` out. Every metric carries the labels ``job`` and ``dataset``; the few others are
bounded by the configuration (stage, rule, table, metric, feature, epoch), never a run id or a key.
"""
from __future__ import annotations

import logging
import re
import time
from collections.abc import Mapping

from prometheus_client import CollectorRegistry, Gauge, generate_latest, push_to_gateway

from shardlake.config import PrometheusSettings
from shardlake.folders import Folder
from shardlake.ops import shown

TEXTFILE = "metrics.prom"
PREFIX = "shardlake_"
log = logging.getLogger(__name__)


class _Metrics:
    """A fresh registry whose gauges all carry ``job`` and ``dataset``; gauges are made on first use."""

    def __init__(self, job: str, dataset: str):
        self.registry = CollectorRegistry()
        self.job, self.dataset = job, dataset
        self._gauges: dict[str, Gauge] = {}

    def set(self, name: str, help_text: str, value: float | int | bool | None, **labels: str) -> None:
        """One sample; a value of None (a figure the report does not have) is left out."""
        if value is None:
            return
        gauge = self._gauges.get(name)
        if gauge is None:
            gauge = Gauge(PREFIX + name, help_text, ["job", "dataset", *labels], registry=self.registry)
            self._gauges[name] = gauge
        gauge.labels(job=self.job, dataset=self.dataset, **{k: str(v) for k, v in labels.items()}).set(float(value))

    def finished(self, stage_seconds: Mapping[str, float | None], finished_at: float) -> CollectorRegistry:
        """The two series every job has: seconds per stage and the time of its last success."""
        for stage, seconds in stage_seconds.items():
            self.set("stage_seconds", "wall-clock seconds a stage of the job took", seconds, stage=stage)
        self.set("last_success_timestamp_seconds", "Unix time the job last finished successfully", finished_at)
        return self.registry


def _table_versions(m: _Metrics, versions: Mapping[str, int | None]) -> None:
    for table, version in versions.items():
        m.set("table_version", "Delta table version the job wrote or read", version, table=table)


def ingest_metrics(report, finished_at: float) -> CollectorRegistry:
    """An ingest run (``IngestReport``): rows read, clean, quarantined (and per rule), duplicates, versions."""
    m = _Metrics("ingest", report.dataset)
    m.set("ingest_rows_read", "records the run read from its source", report.rows_read)
    m.set("ingest_rows_clean", "rows the run wrote to the clean table", report.clean_rows)
    m.set("ingest_rows_quarantined", "rows the run sent to the quarantine table", report.quarantined)
    m.set("ingest_rows_duplicate", "exact duplicate rows the run dropped", report.duplicates_removed)
    for rule, count in sorted(report.rule_counts.items()):
        m.set("ingest_rows_quarantined_by_rule", "quarantined rows that broke a rule (a row breaking two counts "
              "under each)", count, rule=rule)
    _table_versions(m, {"clean": report.table_version, "quarantine": report.quarantine_version})
    return m.finished({"ingest": report.seconds}, finished_at)


def train_metrics(card: Mapping, finished_at: float) -> CollectorRegistry:
    """A training run's model card: throughput, loss and validation metrics per epoch, best and test metrics."""
    m = _Metrics("train", card["dataset"])
    history = card.get("history") or []
    for entry in history:
        epoch = str(entry["epoch"])
        m.set("train_epoch_samples_per_second", "training samples per second of an epoch (all workers)",
              entry.get("samples_per_second"), epoch=epoch)
        m.set("train_epoch_loss", "mean training loss of an epoch", entry.get("train_loss"), epoch=epoch)
        for metric, value in sorted((entry.get("validation") or {}).items()):
            m.set("train_epoch_validation", "validation metric after an epoch", value, epoch=epoch, metric=metric)
    rates = [e["samples_per_second"] for e in history if e.get("samples_per_second")]
    m.set("train_samples_per_second", "mean training samples per second over the run's epochs",
          sum(rates) / len(rates) if rates else None)
    m.set("train_validation_metric", "the best epoch's validation metric (the one the model was chosen by)",
          card.get("validation_metric"), metric=card["metric_name"])
    for metric, value in sorted((card.get("test_metrics") or {}).items()):
        m.set("train_test_metric", "the model's metric on the test split", value, metric=metric)
    m.set("train_epochs_run", "epochs the run trained", card.get("epochs_run", len(history)))
    m.set("train_restarts", "times the training stage was started again after a fault", card.get("restarts", 0))
    _table_versions(m, {"clean": card.get("table_version")})
    return m.finished({"train": card.get("seconds")}, finished_at)


def promote_metrics(decision, dataset: str, seconds: float | None, finished_at: float) -> CollectorRegistry:
    """A promotion gate's ``GateDecision``: promoted or not, and both models' metric on the same test rows."""
    m = _Metrics("promote", dataset)
    m.set("promote_promoted", "1 when the gate promoted the candidate, else 0", decision.promoted)
    m.set("promote_candidate_metric", "the candidate's test metric", decision.candidate_metric,
          metric=decision.metric_name)
    m.set("promote_champion_metric", "the production model's test metric on the same rows",
          decision.champion_metric, metric=decision.metric_name)
    _table_versions(m, {"clean": decision.table_version})
    return m.finished({"promote": seconds}, finished_at)


def infer_metrics(report, dataset: str, finished_at: float) -> CollectorRegistry:
    """An inference run's ``InferReport``: rows scored, rows per second, drift flags per metric and feature."""
    m = _Metrics("infer", dataset)
    m.set("infer_rows_scored", "rows the run scored", report.rows_scored)
    m.set("infer_rows_per_second", "rows scored per second of the whole run",
          report.rows_scored / report.seconds if report.seconds else None)
    comparison = report.comparison or {}
    for metric, check in sorted(comparison.get("new_rows", {}).items()):
        m.set("infer_drift", "1 when a metric on rows new to the model is worse than at test beyond tolerance",
              check["drifted"], metric=metric)
    for feature, check in sorted(comparison.get("distributions", {}).items()):
        m.set("infer_distribution_drift", "1 when a feature's (or the score's) distribution drifted (PSI/KS)",
              check["drifted"], feature=feature)
    for metric, check in sorted(comparison.get("sanity", {}).items()):
        m.set("infer_sanity_failed", "1 when a metric on the training version's test split differs from the card",
              check["failed"], metric=metric)
    _table_versions(m, {"clean": report.source_version, "predictions": report.predictions_version})
    return m.finished({"infer": report.seconds}, finished_at)


def pipeline_metrics(dataset: str, stage_seconds: Mapping[str, float], finished_at: float) -> CollectorRegistry:
    """The whole chain in one process: seconds per stage and its last success (each stage exports its own)."""
    return _Metrics("pipeline", dataset).finished(stage_seconds, finished_at)


def run_folder(lake, dataset: str, job: str, run: str) -> Folder:
    """The run folder of a job that has none of its own (ingest, promote, pipeline): ``_runs/<dataset>/<job>/<run>``
    under the lake root, on the lake's store."""
    return Folder(lake.location("_runs", dataset, job, re.sub(r"[^A-Za-z0-9_.+-]", "_", run)), lake.store.settings)


def export(registry: CollectorRegistry, folder: Folder | str, settings: PrometheusSettings) -> str | None:
    """Write the registry as ``metrics.prom`` into ``folder`` and push it when a Pushgateway is configured.

    The push's grouping key is the registry's own (job, dataset) labels, so a re-run replaces its
    own series on the gateway. Returns the textfile's location (None if it could not be written).
    A failure of either is logged as one warning and never raised: metrics report on a job's work,
    they are not part of it.
    """
    job, dataset = next((s.labels["job"], s.labels["dataset"]) for family in registry.collect()
                        for s in family.samples)
    text = generate_latest(registry)
    location = None
    try:
        location = Folder.of(folder).make().write_bytes(TEXTFILE, text)
    except Exception as err:  # noqa: BLE001 - any store error: the job's own work is done
        log.warning("prometheus: could not write %s into %s: %s", TEXTFILE, folder, _one_line(err))
    if settings.pushgateway_url:
        try:
            push_to_gateway(settings.pushgateway_url, job=job, grouping_key={"dataset": dataset}, registry=registry,
                            timeout=settings.push_timeout_s)
        except Exception as err:  # noqa: BLE001 - refused, unreachable, timed out, rejected: all one warning
            log.warning("prometheus: push of job %r dataset %r to %s failed: %s", job, dataset,
                        shown(settings.pushgateway_url), _one_line(err))
    return location


# What the jobs call once after success.
def export_ingest(report, lake, settings: PrometheusSettings) -> str | None:
    """An ingest run's metrics into ``_runs/<dataset>/ingest/<run id>`` (and the gateway)."""
    return export(ingest_metrics(report, now()), run_folder(lake, report.dataset, "ingest", report.run_id), settings)


def export_train(card: Mapping, lake, settings: PrometheusSettings) -> str | None:
    """A training run's metrics into its model folder, beside the card (and the gateway)."""
    return export(train_metrics(card, now()), Folder(card["model_dir"], lake.store.settings), settings)


def export_promote(decision, dataset: str, seconds: float | None, lake, settings: PrometheusSettings) -> str | None:
    """A gate decision's metrics into ``_runs/<dataset>/promote/<model version>`` (and the gateway)."""
    return export(promote_metrics(decision, dataset, seconds, now()),
                  run_folder(lake, dataset, "promote", decision.model_version), settings)


def export_infer(report, dataset: str, lake, settings: PrometheusSettings) -> str | None:
    """An inference run's metrics into its run folder, beside report.json (and the gateway)."""
    folder = report.run_dir or run_folder(lake, dataset, "infer", f"{report.logical_date}_v{report.source_version}")
    return export(infer_metrics(report, dataset, now()), Folder.of(folder, lake.store.settings), settings)


def export_pipeline(dataset: str, stage_seconds: Mapping[str, float], run: str, lake,
                    settings: PrometheusSettings) -> str | None:
    """The pipeline's own metrics (seconds per stage) into ``_runs/<dataset>/pipeline/<logical date>``."""
    return export(pipeline_metrics(dataset, stage_seconds, now()), run_folder(lake, dataset, "pipeline", run),
                  settings)


def now() -> float:
    """The Unix time a job finished (the ``finished_at`` of the ``*_metrics`` functions)."""
    return time.time()


def _one_line(err: BaseException) -> str:
    return " ".join(f"{type(err).__name__}: {err}".split())
