"""spark-submit / python -m entry point of the training stage."""
from __future__ import annotations

import json

from rich.console import Console

from jobs import common
from jobs.versioning import code_version
from shardlake.ops import lineage, prometheus, tracking
from shardlake.stages import train
from shardlake.stages.gate import run_gate


def main(argv: list[str] | None = None) -> int:
    """Train on the clean table (one exact version) with the configured backend; register the model."""
    p = common.parser("Train a model on the clean Delta table with Petastorm and Horovod-on-Spark "
                      "(or TorchDistributor: train.backend=torch_distributor).")
    p.add_argument("--run-id", default=None,
                   help="resume or name a run (default: derived from config, table version and code version)")
    p.add_argument("--table-version", type=int, default=None,
                   help="clean table version to train on (default: train.table_version, else the latest)")
    p.add_argument("--promote", action="store_true",
                   help="run the promotion gate on the new model (as jobs/promote.py: against production, same test rows)")
    p.add_argument("--json", action="store_true", help="print the model card summary as JSON")
    args = p.parse_args(argv)
    config = common.load(args)
    console = Console()
    spark, lake = common.start(config)
    run = lineage.JobRun.begin(spark, config.monitoring.lineage, lake.root, f"train.{config.dataset.name}")
    try:
        with common.progress(config, spark, "training", console) as shown:
            _, card = train.fit(spark, lake, config, code_version(), args.run_id, log=console.print,
                                table_version=args.table_version, progress=shown)
    except train.TrainingError as err:
        run.fail(err)
        console.print(f"[red]training failed:[/red] {err}")
        return 1
    run.complete(lambda: lineage.training_datasets(lake, config.dataset.name, card))
    prometheus.export_train(card, lake, config.monitoring.prometheus)
    result = train.summary(card)
    if args.promote:
        try:
            decision = run_gate(spark, lake, config.dataset, config.train, card["model_version"],
                                config.infer.batch_size, mlflow=config.monitoring.mlflow)
        except tracking.TrackingError as err:  # the registry's decision stands; the gate job moves the alias
            console.print(f"[red]gate: decided, but the MLflow alias is not moved:[/red] {err}")
            return 1
        prometheus.export_promote(decision, config.dataset.name, None, lake, config.monitoring.prometheus)
        result.update(promoted=decision.promoted, gate=decision.to_dict())
    common.write_result(args, result)
    print(json.dumps(result, default=str) if args.json else json.dumps(result, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
