"""The retraining rule of the pipeline DAG's branch (airflow_dags/shardlake_airflow/schedule.py): plain Python."""
from __future__ import annotations

import datetime as dt
import importlib.util
from pathlib import Path

import pytest

_PATH = Path(__file__).resolve().parent.parent / "airflow_dags" / "shardlake_airflow" / "schedule.py"
_SPEC = importlib.util.spec_from_file_location("shardlake_airflow_schedule", _PATH)
schedule = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(schedule)

START = dt.date(2024, 1, 1)
QUIET = {"drift": [], "distribution_drift": []}


def retrain(day: int, previous=QUIET, first_run=False, on_drift=True, forced=None, every=7) -> bool:
    return schedule.should_retrain(START + dt.timedelta(days=day), START, every, previous, first_run, on_drift,
                                   forced)[0]


def test_training_follows_its_own_schedule_from_the_start_date():
    assert [day for day in range(15) if retrain(day)] == [0, 7, 14]


def test_the_first_run_of_a_dag_trains_off_schedule():
    assert retrain(3, previous=None, first_run=True) is True


def test_drift_flagged_by_the_previous_interval_triggers_training():
    assert retrain(3, previous={"drift": ["auc"], "distribution_drift": []}) is True
    assert retrain(3, previous={"drift": [], "distribution_drift": ["distance"]}) is True


def test_drift_does_not_trigger_training_when_the_dag_says_not_to():
    assert retrain(3, previous={"drift": ["auc"]}, on_drift=False) is False


@pytest.mark.parametrize("forced", [True, False])
def test_the_runs_param_overrides_the_schedule(forced):
    assert (retrain(0, forced=forced), retrain(3, forced=forced)) == (forced, forced)


def test_the_reason_names_what_decided():
    assert "every 7 days" in schedule.should_retrain(START, START, 7, None, False, True)[1]
    assert "['auc']" in schedule.should_retrain(START + dt.timedelta(days=2), START, 7, {"drift": ["auc"]},
                                                False, True)[1]
