"""spark-submit / python -m entry point of the batch inference stage."""
from __future__ import annotations

import json

from rich.console import Console

from jobs import common
from shardlake.reporting import print_infer
from shardlake.stages.infer import InferenceError, run_infer


def main(argv: list[str] | None = None) -> int:
    """Score the clean table with the production (or given) model; MERGE predictions; print the summary."""
    p = common.parser("Batch inference: map (score) and reduce (summarise) stages writing to Delta.")
    p.add_argument("--logical-date", required=True, type=common.iso_date,
                   help="the run's logical date, YYYY-MM-DD (Airflow's ds)")
    p.add_argument("--model-version", default=None, help="default: the dataset's production model")
    p.add_argument("--table-version", type=int, default=None, help="clean table version (default: latest)")
    p.add_argument("--incremental", action="store_true", default=None,
                   help="score only keys this model version has not scored yet (default: infer.incremental)")
    p.add_argument("--quantize", action="store_true", default=None,
                   help="score with the int8 dynamically quantised model on the CPU and report the change against "
                        "the float model; predictions are written under <model version>+int8 (default: infer.quantize)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    config = common.load(args)
    console = Console(stderr=True)
    spark, lake = common.start(config)
    try:
        with console.status("inference") as status:
            report = run_infer(spark, lake, config, args.logical_date, args.model_version, args.table_version,
                               progress=lambda m: status.update(f"inference: {m}"), incremental=args.incremental,
                               quantize_model=args.quantize)
    except InferenceError as err:
        console.print(f"[red]inference failed:[/red] {err}")
        return 1
    if args.json:
        print(json.dumps(report.to_dict(), default=str))
    else:
        print_infer(report, Console(width=140))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
