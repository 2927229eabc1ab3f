"""When a pipeline run retrains: on its own schedule, or when the previous interval's inference saw drift.

Scoring runs every interval; training does not have to. Pure Python on plain values (no Airflow
import), so the rule is tested on its own and the DAG's branch task only gathers its inputs.
"""
from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any


def should_retrain(logical_date: dt.date, start_date: dt.date, every_days: int, previous: Mapping[str, Any] | None,
                   first_run: bool, on_drift: bool, forced: bool | None = None) -> tuple[bool, str]:
    """Whether the run of ``logical_date`` trains a candidate, and why.

    In order: ``forced`` (the run's ``retrain`` param) decides when given; the DAG's first run
    trains (there is no model yet); a run ``every_days`` days from ``start_date`` trains; and,
    with ``on_drift``, a run after an interval whose inference flagged drift (``previous``: that
    inference's result) trains. Every input is a fact of the interval or of the one before it,
    never the wall clock, so re-running an interval takes the same branch.
    """
    if forced is not None:
        return forced, f"the run's retrain param is {str(forced).lower()}"
    if first_run:
        return True, "the first run of the DAG: no model to score with yet"
    if every_days < 1:
        raise ValueError(f"retrain_every_days must be at least 1, got {every_days}")
    days = (logical_date - start_date).days
    if days % every_days == 0:
        return True, f"on the retraining schedule (every {every_days} days from {start_date})"
    previous = previous or {}
    drifted = sorted({*previous.get("drift", []), *previous.get("distribution_drift", [])})
    if on_drift and drifted:
        return True, f"the previous interval's inference flagged drift in {drifted}"
    return False, f"not on the retraining schedule (every {every_days} days) and no drift flagged before"
