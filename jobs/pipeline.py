"""The whole chain in one process: ingest -> train (+ promote) -> infer. What `make demo` runs."""
from __future__ import annotations

import time
from contextlib import contextmanager

from rich.console import Console
from rich.table import Table

from jobs import common
from jobs.versioning import code_version
from shardlake.delta_io import SchemaChangeError
from shardlake.intervals import DataInterval
from shardlake.layout import LayoutChangeError
from shardlake.ops import lineage, prometheus, tracking
from shardlake.reporting import print_infer, print_ingest
from shardlake.sources import SourceError
from shardlake.stages import train
from shardlake.stages.gate import run_gate
from shardlake.stages.infer import InferenceError, run_infer
from shardlake.stages.ingest import IngestError, run_ingest

# What a stage may raise about its input or its data, as each stage's own job reports it: one line and an
# exit code, no traceback. Refusals come before any write (2); failures leave every table as it was (1).
REFUSED = (SourceError, SchemaChangeError, LayoutChangeError)
FAILED = (IngestError, train.TrainingError, InferenceError)


class _Stopped(Exception):
    """A stage stopped the chain; its message is printed, ``code`` is the job's exit code."""

    def __init__(self, code: int):
        super().__init__(code)
        self.code = code


@contextmanager
def _stage(run: lineage.JobRun, name: str, console: Console):
    """Run one stage under its lineage run: a refusal or failure is its FAIL event and one printed line."""
    try:
        yield
    except REFUSED as err:
        run.fail(err)
        console.print(f"[red]{name} refused:[/red] {err}")
        raise _Stopped(2) from None
    except FAILED as err:
        run.fail(err)
        console.print(f"[red]{name} failed:[/red] {err}")
        raise _Stopped(1) from None


def main(argv: list[str] | None = None) -> int:
    """Run every stage on the configured dataset and print what each did and how long it took."""
    p = common.parser("Run ingest, training and inference end to end.")
    p.add_argument("--logical-date", type=common.iso_date, required=True,
                   help="the run's logical date, YYYY-MM-DD: stamps predictions and fills a source path template "
                        "(a date the data is about, not the clock's)")
    args = p.parse_args(argv)
    config = common.load(args)
    try:
        return _chain(args, config)
    except _Stopped as stopped:
        return stopped.code


def _chain(args, config) -> int:
    logical_date = args.logical_date
    interval = DataInterval.daily(logical_date)
    console = Console(width=140)
    spark, lake = common.start(config)
    timings: dict[str, float] = {}

    started = time.monotonic()
    run = lineage.JobRun.begin(spark, config.monitoring.lineage, lake.root, f"ingest.{config.dataset.name}")
    with _stage(run, "ingest", console), common.progress(config, spark, "ingest", console) as shown:
        ingest = run_ingest(spark, lake, config.dataset, f"pipeline-{logical_date}", common.base_dir(args),
                            progress=shown.step, interval=interval)
    run.complete(lambda: lineage.ingest_datasets(lake, config.dataset, common.base_dir(args), interval, ingest))
    timings["ingest"] = time.monotonic() - started
    metrics = config.monitoring.prometheus
    prometheus.export_ingest(ingest, lake, metrics)
    print_ingest(ingest, console)

    started = time.monotonic()
    run = lineage.JobRun.begin(spark, config.monitoring.lineage, lake.root, f"train.{config.dataset.name}")
    with _stage(run, "training", console), common.progress(config, spark, "training", console) as shown:
        _, card = train.fit(spark, lake, config, code_version(), log=console.print, table_version=ingest.table_version,
                            progress=shown)
    run.complete(lambda: lineage.training_datasets(lake, config.dataset.name, card))
    try:
        gate = run_gate(spark, lake, config.dataset, config.train, card["model_version"], config.infer.batch_size,
                        mlflow=config.monitoring.mlflow)
    except tracking.TrackingError as err:  # the registry's decision stands; jobs.promote moves the alias again
        console.print(f"[red]gate: decided, but the MLflow alias is not moved:[/red] {err}")
        return 1
    timings["train"] = time.monotonic() - started
    prometheus.export_train(card, lake, metrics)
    prometheus.export_promote(gate, config.dataset.name, None, lake, metrics)
    console.print(f"model {card['model_version']}: validation {card['metric_name']} {card['validation_metric']:.4f}, "
                  f"test {card['test_metrics']}; promoted to production: {gate.promoted} ({gate.reason})")
    console.print(f"training curve: {card['model_dir']}/training_curve.png")

    if gate.serving_version is None:
        console.print(f"[red]no model to score with:[/red] the gate refused {card['model_version']} "
                      f"({gate.reason}) and there is no production model")
        return 1
    started = time.monotonic()
    run = lineage.JobRun.begin(spark, config.monitoring.lineage, lake.root, f"infer.{config.dataset.name}")
    with _stage(run, "inference", console), common.progress(config, spark, "inference", console) as shown:
        # The model the gate left in production (a refused candidate does not score), on the version ingested.
        report = run_infer(spark, lake, config, logical_date, model_version=gate.serving_version,
                           table_version=ingest.table_version, progress=shown.step)
    run.complete(lambda: lineage.inference_datasets(lake, config.dataset.name, report))
    timings["infer"] = time.monotonic() - started
    prometheus.export_infer(report, config.dataset.name, lake, metrics)
    prometheus.export_pipeline(config.dataset.name, timings, logical_date, lake, metrics)
    print_infer(report, console)

    table = Table(title="pipeline seconds per stage")
    table.add_column("stage")
    table.add_column("seconds", justify="right")
    for stage, seconds in timings.items():
        table.add_row(stage, f"{seconds:.1f}")
    console.print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
