"""spark-submit / python -m entry point of the promotion gate (the Airflow DAG's `gate` task).

Scores the candidate and the current production model on the same held-out test rows (the test
split of the table version the candidate was trained on) and promotes the candidate only if it
is at least as good by train.promote_margin and reaches train.promote_threshold
(``shardlake.stages.gate``). Both figures are printed and kept on the registry row. Exit codes:
0 promoted (or already production), 3 refused (a deliberate, final answer: below the floor, not
better than production, or no such model), 1 could not decide (nothing trained for this config).
"""
from __future__ import annotations

import json
import time

from rich.console import Console

from jobs import common
from jobs.versioning import code_version
from shardlake import registry
from shardlake.ops import prometheus, tracking
from shardlake.stages.gate import run_gate

REFUSED = 3


def main(argv: list[str] | None = None) -> int:
    """Judge the given (default: this configuration's latest trained) model against production; print the decision."""
    p = common.parser("Promotion gate: the candidate against the production model on the same test rows.")
    p.add_argument("--model-version", default=None,
                   help="default: the model the train job registered last for this configuration and code version")
    p.add_argument("--judge-again", action="store_true",
                   help="judge a candidate again although a gate decided on it before (default: report that decision)")
    p.add_argument("--json", action="store_true", help="print the decision as JSON")
    args = p.parse_args(argv)
    config = common.load(args)
    console = Console(stderr=True)
    spark, lake = common.start(config)
    model_version = args.model_version or registry.latest_trained(
        spark, lake.registry(), config.dataset.name, config.fingerprint(), code_version())
    if model_version is None:
        console.print(f"[red]gate:[/red] no model trained for this configuration of {config.dataset.name!r} "
                      f"in {lake.registry()}; run the train job first")
        return 1
    started = time.monotonic()
    try:
        decision = run_gate(spark, lake, config.dataset, config.train, model_version, config.infer.batch_size,
                            args.judge_again, config.monitoring.mlflow)
    except registry.PromotionError as err:
        console.print(f"[red]gate: not promoted:[/red] {err}")
        return REFUSED
    except tracking.TrackingError as err:  # the registry's decision stands; a re-run moves the alias
        console.print(f"[red]gate: decided, but the MLflow alias is not moved:[/red] {err}")
        return 1
    prometheus.export_promote(decision, config.dataset.name, time.monotonic() - started, lake,
                              config.monitoring.prometheus)
    common.write_result(args, decision.to_dict())
    print(json.dumps(decision.to_dict(), default=str) if args.json else json.dumps(decision.to_dict(), indent=2,
                                                                                    default=str))
    if not decision.promoted:
        console.print(f"[red]gate: not promoted:[/red] {decision.reason}")
        return REFUSED
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
