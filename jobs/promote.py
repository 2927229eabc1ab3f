"""spark-submit / python -m entry point of the promotion gate (the Airflow DAG's `gate` task).

Promotes a registered model to production only if its validation metric meets the configured
train.promote_threshold. Exit codes: 0 promoted (or already production), 3 refused (below the
threshold, or no such model: a deliberate, final answer), 1 could not decide (no clean table).
"""
from __future__ import annotations

import json

from rich.console import Console

from jobs import common
from shardlake import delta_io, registry
from shardlake.config import AppConfig
from shardlake.lake import Lake
from shardlake.stages.train import model_version_for
from shardlake.training.metrics import primary_metric

REFUSED = 3


def trained_model_version(spark, lake: Lake, config: AppConfig) -> str | None:
    """The version the train job registers for this configuration: the same config on the same clean
    table version names the same model (train.table_version, else the table's latest version)."""
    table_path = lake.table(config.dataset.name, "clean")
    if not delta_io.table_exists(spark, table_path):
        return None
    version = config.train.table_version
    if version is None:
        version = delta_io.latest_version(spark, table_path)
    return model_version_for(config.dataset.name, version, config.fingerprint())


def main(argv: list[str] | None = None) -> int:
    """Promote the given (default: this configuration's) model if it meets the threshold; print the decision."""
    p = common.parser("Promotion gate: make a trained model production if it meets train.promote_threshold.")
    p.add_argument("--model-version", default=None,
                   help="default: the model the train job registers for this configuration and table version")
    p.add_argument("--json", action="store_true", help="print the decision as JSON")
    args = p.parse_args(argv)
    config = common.load(args)
    console = Console(stderr=True)
    spark, lake = common.start(config)
    model_version = args.model_version or trained_model_version(spark, lake, config)
    if model_version is None:
        console.print(f"[red]gate:[/red] no clean table for {config.dataset.name!r} in {lake.root}; run the ingest first")
        return 1
    metric, higher_is_better = primary_metric(config.dataset.label.kind)
    threshold = config.train.promote_threshold
    card = registry.model_card(spark, lake.registry(), model_version) or {}
    decision = {"model_version": model_version, "metric_name": metric,
                "validation_metric": card.get("validation_metric"), "threshold": threshold,
                "higher_is_better": higher_is_better, "promoted": True, "reason": ""}
    try:
        registry.promote(spark, lake.registry(), model_version, threshold, higher_is_better)
    except registry.PromotionError as err:
        decision.update(promoted=False, reason=str(err))
    print(json.dumps(decision, default=str) if args.json else json.dumps(decision, indent=2, default=str))
    if not decision["promoted"]:
        console.print(f"[red]gate: not promoted:[/red] {decision['reason']}")
        return REFUSED
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
