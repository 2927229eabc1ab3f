"""Live progress: Spark's running stages read from its status tracker, one line per step in logs, bars on a
terminal, and rank 0's training position handed to the driver through the run folder."""
from __future__ import annotations

import io
import json
import threading
import time

import pytest
from rich.console import Console

from shardlake.folders import Folder
from shardlake.ops.progress import (PROGRESS_FILE, JobProgress, TrainingState, TrainingTicker, is_live,
                                    read_training_state, running_stages)

PARTITIONS = 3


def _slow_job(spark, started: threading.Event, seconds: float = 1.5) -> threading.Thread:
    """A Spark job of PARTITIONS tasks that each sleep, run in a thread (the test polls while it runs)."""
    def sleepy(rows):
        time.sleep(seconds)
        return rows

    def run():
        started.set()
        spark.sparkContext.parallelize(range(PARTITIONS), PARTITIONS).mapPartitions(sleepy).count()

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def _wait_for_stage(tracker, timeout_s: float = 30.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        stages = running_stages(tracker)
        if stages:
            return stages
        time.sleep(0.05)
    raise AssertionError("no running stage was reported")


def _terminal() -> tuple[Console, io.StringIO]:
    out = io.StringIO()
    return Console(file=out, force_terminal=True, width=120, color_system=None), out


def test_a_running_stage_is_reported_with_its_task_count(spark):
    started = threading.Event()
    job = _slow_job(spark, started)
    started.wait()
    stages = _wait_for_stage(spark.sparkContext.statusTracker())
    job.join()
    assert [(s.tasks, 0 <= s.done <= s.tasks) for s in stages] == [(PARTITIONS, True)]


def test_in_a_log_each_step_is_one_line():
    out = io.StringIO()
    console = Console(file=out, width=120)
    with JobProgress("ingest", console, live=False) as shown:
        shown.step("reading the source")
        shown.step("writing the clean table")
    assert out.getvalue() == "ingest: reading the source\ningest: writing the clean table\n"


def test_on_a_terminal_a_running_stage_gets_a_bar(spark):
    console, out = _terminal()
    started = threading.Event()
    with JobProgress("ingest", console, live=True, status_tracker=spark.sparkContext.statusTracker(),
                     poll_s=0.05) as shown:
        shown.step("counting")
        job = _slow_job(spark, started)
        started.wait()
        job.join()
    assert "ingest: counting" in out.getvalue()
    assert f"/{PARTITIONS}" in out.getvalue() and "stage " in out.getvalue()


@pytest.mark.parametrize("mode, terminal, live", [
    ("auto", True, True), ("auto", False, False), ("always", False, True), ("never", True, False)])
def test_bars_are_shown_on_a_terminal_unless_configured_otherwise(mode, terminal, live):
    assert is_live(mode, Console(file=io.StringIO(), force_terminal=terminal)) is live


class _Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_rank_zero_writes_its_position_at_most_once_per_interval(tmp_path):
    folder, clock = Folder(tmp_path / "run").make(), _Clock()
    ticker = TrainingTicker(folder, epochs=4, ranks=2, every_s=1.0, clock=clock)
    ticker.start_epoch()
    clock.now += 2.0
    ticker.tick(epoch=1, step=10, rows=5000)
    clock.now += 0.5
    ticker.tick(epoch=1, step=11, rows=5500)  # within the interval: not written
    assert read_training_state(folder) == TrainingState(epoch=1, epochs=4, step=10, rows=5000,
                                                        samples_per_second=2500.0, ranks=2)


def test_other_ranks_write_nothing(tmp_path):
    folder = Folder(tmp_path / "run").make()
    TrainingTicker(None, epochs=4, ranks=2, every_s=0.0).tick(epoch=0, step=1, rows=10)
    assert not folder.exists(PROGRESS_FILE)


class _Unwritable:
    def write_text(self, name, text):
        raise OSError("read-only file system")


def test_a_failed_progress_write_warns_once_and_training_goes_on(caplog):
    ticker = TrainingTicker(_Unwritable(), epochs=2, ranks=1, every_s=0.0)
    ticker.tick(epoch=0, step=1, rows=10)
    ticker.tick(epoch=0, step=2, rows=20)
    assert [r.levelname for r in caplog.records if "progress" in r.getMessage()] == ["WARNING"]


def test_the_driver_shows_rank_zeros_epoch_step_and_rate(tmp_path):
    folder = Folder(tmp_path / "run").make()
    state = TrainingState(epoch=1, epochs=4, step=7, rows=7168, samples_per_second=12345.0, ranks=2)
    folder.write_text(PROGRESS_FILE, json.dumps(state.__dict__))
    console, out = _terminal()
    with JobProgress("training", console, live=True, poll_s=0.05) as shown:
        with shown.training(folder, epochs=4):
            time.sleep(0.5)
    assert "epoch 2/4 step 7  12,345 samples/s per worker (2 ranks)" in out.getvalue()
