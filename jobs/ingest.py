"""spark-submit / python -m entry point of the ingest stage."""
from __future__ import annotations

import datetime as dt
import json

from rich.console import Console

from jobs import common
from shardlake.delta_io import SchemaChangeError
from shardlake.layout import LayoutChangeError, RebuildError
from shardlake.reporting import print_ingest
from shardlake.sources import SourceError
from shardlake.stages.ingest import IngestError, rebuild_layout, run_ingest


def main(argv: list[str] | None = None) -> int:
    """Clean and shard the configured dataset into its Delta tables; print the accounting."""
    p = common.parser("Ingest a dataset into clean + quarantine Delta tables.")
    p.add_argument("--run-id", default=None, help="stable id of this run (default: ingest-<UTC time>)")
    p.add_argument("--mode", choices=["quarantine", "fail_fast"], default="quarantine")
    p.add_argument("--optimize", action="store_true",
                   help="OPTIMIZE the clean table afterwards (compaction, ZORDER BY the dataset's cluster_by)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--rebuild-layout", action="store_true",
                   help="rewrite the clean table in the configured layout (shards, splits, salt) in one commit, "
                        "then stop; run it while no ingest writes the table")
    args = p.parse_args(argv)
    config = common.load(args)
    run_id = args.run_id or f"ingest-{dt.datetime.now(dt.timezone.utc):%Y%m%dT%H%M%SZ}"
    console = Console(stderr=True)
    spark, lake = common.start(config)
    if args.rebuild_layout:
        return _rebuild(spark, lake, config, console)
    try:
        with console.status("ingest") as status:
            report = run_ingest(spark, lake, config.dataset, run_id, common.base_dir(args), args.mode,
                                args.optimize, progress=lambda msg: status.update(f"ingest: {msg}"))
    except IngestError as err:
        console.print(f"[red]ingest failed:[/red] {err}")
        return 1
    except (SourceError, SchemaChangeError, LayoutChangeError) as err:  # refused before any write: no traceback
        console.print(f"[red]ingest refused:[/red] {err}")
        return 2
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
