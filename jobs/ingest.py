"""spark-submit / python -m entry point of the ingest stage."""
from __future__ import annotations

import datetime as dt
import json

from rich.console import Console

from jobs import common
from shardlake.delta_io import SchemaChangeError
from shardlake.intervals import DataInterval, IntervalError
from shardlake.layout import LayoutChangeError, RebuildError
from shardlake.ops import lineage, prometheus
from shardlake.reporting import print_ingest
from shardlake.sources import SourceError
from shardlake.stages.ingest import IngestError, for_interval, rebuild_layout, run_ingest


def main(argv: list[str] | None = None) -> int:
    """Clean and shard the configured dataset into its Delta tables; print the accounting."""
    p = common.parser("Ingest a dataset into clean + quarantine Delta tables.")
    p.add_argument("--run-id", default=None,
                   help="stable id of this run (default: ingest-<dataset>-<logical date>, "
                        "or ingest-<UTC time> without one)")
    p.add_argument("--logical-date", type=common.iso_date, default=None,
                   help="start of the run's data interval, YYYY-MM-DD (Airflow's ds): fills a source path template")
    p.add_argument("--interval-end", type=common.iso_date, default=None,
                   help="end of the data interval (exclusive; default: the day after --logical-date)")
    p.add_argument("--mode", choices=["quarantine", "fail_fast"], default="quarantine")
    p.add_argument("--optimize", action="store_true",
                   help="OPTIMIZE the clean table afterwards (compaction, ZORDER BY the dataset's cluster_by)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--rebuild-layout", action="store_true",
                   help="rewrite the clean table in the configured layout (shards, splits, salt) in one commit, "
                        "then stop; run it while no ingest writes the table")
    args = p.parse_args(argv)
    config = common.load(args)
    try:
        interval = DataInterval.daily(args.logical_date, args.interval_end) if args.logical_date else None
        for_interval(config.dataset, interval)  # a template without an interval is refused before Spark starts
    except IntervalError as err:
        Console(stderr=True).print(f"[red]ingest refused:[/red] {err}")
        return 2
    run_id = args.run_id or (f"ingest-{config.dataset.name}-{args.logical_date}" if args.logical_date
                             else f"ingest-{dt.datetime.now(dt.timezone.utc):%Y%m%dT%H%M%SZ}")
    console = Console(stderr=True)
    spark, lake = common.start(config)
    if args.rebuild_layout:
        return _rebuild(spark, lake, config, console)
    run = lineage.JobRun.begin(spark, config.monitoring.lineage, lake.root, f"ingest.{config.dataset.name}")
    try:
        with common.progress(config, spark, "ingest", console) as shown:
            report = run_ingest(spark, lake, config.dataset, run_id, common.base_dir(args), args.mode,
                                args.optimize, progress=shown.step, interval=interval)
    except IngestError as err:
        run.fail(err)
        console.print(f"[red]ingest failed:[/red] {err}")
        return 1
    except (SourceError, SchemaChangeError, LayoutChangeError) as err:  # refused before any write: no traceback
        run.fail(err)
        console.print(f"[red]ingest refused:[/red] {err}")
        return 2
    run.complete(lambda: lineage.ingest_datasets(lake, config.dataset, common.base_dir(args), interval, report))
    common.write_result(args, report.to_dict())
    prometheus.export_ingest(report, lake, config.monitoring.prometheus)
    if args.json:
        print(json.dumps(report.to_dict(), default=str))
    else:
        print_ingest(report, Console(width=140))
    if report.skew_warning:
        console.print(f"[yellow]warning:[/yellow] shard skew {report.skew_ratio:.3f} (max/mean rows per shard) "
                      f"is above {config.dataset.skew_warn_ratio}")
    return 0


def _rebuild(spark, lake, config, console: Console) -> int:
    """--rebuild-layout: one commit that rewrites every clean row in the configured layout."""
    try:
        with console.status("rebuilding the clean table's layout"):
            version = rebuild_layout(spark, lake, config.dataset)
    except RebuildError as err:
        console.print(f"[red]rebuild failed:[/red] {err}")
        return 1
    console.print(f"rebuilt {lake.table(config.dataset.name, 'clean')} in the configured layout "
                  f"(shards={config.dataset.shards}): version {version}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
