"""spark-submit / python -m entry point of the batch inference stage."""
from __future__ import annotations

import json

from rich.console import Console

from jobs import common
from shardlake.ops import lineage, prometheus
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
    p.add_argument("--reuse-interval", action="store_true",
                   help="if this logical date was scored before, score it again with the same model and table version "
                        "(for whichever is not given): a re-run reproduces the interval")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    config = common.load(args)
    console = Console(stderr=True)
    spark, lake = common.start(config)
    run = lineage.JobRun.begin(spark, config.monitoring.lineage, lake.root, f"infer.{config.dataset.name}")
    try:
        with common.progress(config, spark, "inference", console) as shown:
            report = run_infer(spark, lake, config, args.logical_date, args.model_version, args.table_version,
                               progress=shown.step, incremental=args.incremental,
                               quantize_model=args.quantize, reuse_interval=args.reuse_interval)
    except InferenceError as err:
        run.fail(err)
        console.print(f"[red]inference failed:[/red] {err}")
        return 1
    prometheus.export_infer(report, config.dataset.name, lake, config.monitoring.prometheus)
    run.complete(lambda: lineage.inference_datasets(lake, config.dataset.name, report))
    common.write_result(args, _result(report))
    if args.json:
        print(json.dumps(report.to_dict(), default=str))
    else:
        print_infer(report, Console(width=140))
    return 0


def _result(report) -> dict:
    """What the next tasks need of an inference run (the full report is report.json in its run folder)."""
    return {"model_version": report.model_version, "source_version": report.source_version,
            "logical_date": report.logical_date, "rows_scored": report.rows_scored,
            "predictions_version": report.predictions_version, "run_dir": report.run_dir,
            "drift": sorted(report.drift), "distribution_drift": sorted(report.distribution_drift),
            "sanity_failed": sorted(report.sanity_failed)}


if __name__ == "__main__":
    raise SystemExit(main())
