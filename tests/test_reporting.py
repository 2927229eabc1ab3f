"""What a person reads after a stage: inference prints only what drifted or failed its sanity check."""
from __future__ import annotations

from types import SimpleNamespace

from rich.console import Console

from shardlake.reporting import print_infer


def _printed(**fields) -> str:
    report = SimpleNamespace(model_version="m", source_table="/t", source_version=3, logical_date="2024-01-02",
                             rows_scored=10, rows_inserted=10, rows_updated=0, predictions_version=1, seconds=1.0,
                             summary=[{"scope": "overall", "rows": 10}], mode="full", quantization={}, plot=None,
                             **fields)
    console = Console(record=True, width=200)
    print_infer(report, console)
    return console.export_text()


def _check(now: float, drifted: bool) -> dict:
    return {"now": now, "at_test": 0.76, "worse_by": 0.76 - now, "allowed": 0.05, "standard_error": 0.01,
            "rows": 500, "drifted": drifted}


def test_only_the_drifted_metric_is_printed():
    new_rows = {"auc": _check(0.60, True), "accuracy": _check(0.75, False)}
    text = _printed(comparison={"new_rows": new_rows}, drift={"auc": new_rows["auc"]}, sanity_failed={})
    assert "DRIFT auc on 500 rows new to the model" in text and "accuracy" not in text


def test_a_version_without_new_rows_says_drift_was_not_judged():
    text = _printed(comparison={}, drift={}, sanity_failed={})
    assert "no labelled rows new to the model" in text and "DRIFT" not in text
