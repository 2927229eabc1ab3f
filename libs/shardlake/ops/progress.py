"""Live progress of a job: the step it is on, a bar per running Spark stage, and training's epochs and steps.

On a terminal the job shows rich progress bars: its current step (``ingest: writing the clean table``),
under it one bar per Spark stage that is running (tasks done of total, read from
``SparkContext.statusTracker()`` by a polling thread), and during training a bar of epochs with rank 0's
step and samples/s. Elsewhere (an Airflow task log, a file) nothing is redrawn: each step is one line.

Training ranks run in Spark tasks, in other processes and possibly on other machines, so rank 0 writes a
small progress record into the run folder (``TrainingTicker``, at most about once a second, through the
run folder's store) and the driver reads it back (``JobProgress.training``). Progress is for people only:
a failure to write or read it never fails a job.
"""
from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass

from rich.console import Console
from rich.progress import BarColumn, Progress, ProgressColumn, SpinnerColumn, Task, TaskID, TextColumn, TimeElapsedColumn
from rich.text import Text

log = logging.getLogger(__name__)

PROGRESS_FILE = "progress.json"


def is_live(mode: str, console: Console) -> bool:
    """Bars (True) or one line per step (False): ``monitoring.progress`` auto means bars on a terminal only."""
    return mode == "always" or (mode == "auto" and console.is_terminal)


@dataclass(frozen=True)
class StageState:
    """One running Spark stage as the status tracker reports it."""

    stage_id: int
    name: str
    tasks: int
    done: int


@dataclass(frozen=True)
class TrainingState:
    """Rank 0's position in training: what ``TrainingTicker`` writes and the driver shows."""

    epoch: int  # 0-based, the epoch in progress
    epochs: int
    step: int  # steps done in this epoch
    rows: int  # this rank's rows in this epoch so far
    samples_per_second: float  # this rank's, over the epoch so far
    ranks: int

    def line(self) -> str:
        return (f"epoch {self.epoch + 1}/{self.epochs} step {self.step}  "
                f"{self.samples_per_second:,.0f} samples/s per worker ({self.ranks} ranks)")


def running_stages(status_tracker) -> list[StageState]:
    """The Spark stages running now, from a ``StatusTracker`` (stages that ended meanwhile are skipped)."""
    stages = []
    for stage_id in sorted(status_tracker.getActiveStageIds()):
        info = status_tracker.getStageInfo(stage_id)
        if info is not None:
            stages.append(StageState(stage_id, info.name, info.numTasks, info.numCompletedTasks))
    return stages


class TrainingTicker:
    """Rank 0's side: write a ``TrainingState`` into the run folder, at most once per ``every_s``.

    ``folder`` is the run's ``Folder`` (None on other ranks: they write nothing). A failed write
    is logged once and then given up for the run: progress must never stop training.
    """

    def __init__(self, folder, epochs: int, ranks: int, every_s: float = 1.0,
                 clock: Callable[[], float] = time.monotonic):
        self.folder, self.epochs, self.ranks, self.every_s, self.clock = folder, epochs, ranks, every_s, clock
        self._last = float("-inf")
        self._epoch_started = clock()

    def start_epoch(self) -> None:
        self._epoch_started = self.clock()

    def tick(self, epoch: int, step: int, rows: int) -> None:
        """After a step of ``epoch``: ``step`` steps and ``rows`` rows done in it by this rank."""
        now = self.clock()
        if self.folder is None or now - self._last < self.every_s:
            return
        self._last = now
        elapsed = max(now - self._epoch_started, 1e-9)
        state = TrainingState(epoch, self.epochs, step, rows, rows / elapsed, self.ranks)
        try:
            self.folder.write_text(PROGRESS_FILE, json.dumps(asdict(state)))
        except Exception as err:  # any store error: progress is for people, training goes on
            log.warning("training progress could not be written (%s); training goes on without it", err)
            self.folder = None


def read_training_state(folder) -> TrainingState | None:
    """The last ``TrainingState`` rank 0 wrote into ``folder``; None before the first (or if unreadable)."""
    try:
        return TrainingState(**json.loads(folder.read_text(PROGRESS_FILE)))
    except Exception:  # not written yet, or being replaced: the next poll reads it
        return None


class _Bar(BarColumn):
    """A bar for what has a total (a stage's tasks, training's epochs); none under the step line."""

    def render(self, task: Task):
        return Text("") if task.total is None else super().render(task)


class _Count(ProgressColumn):
    """``done/total`` for what has a total; nothing for the step line."""

    def render(self, task: Task) -> Text:
        return Text("" if task.total is None else f"{int(task.completed)}/{int(task.total)}")


class JobProgress:
    """What a job shows while it works. Use as a context manager; ``step`` is the stages' ``progress`` callback.

    ``live``: bars (a terminal) or one line per step (logs). ``status_tracker``: the Spark context's
    tracker whose running stages get a bar each (None: none shown).
    """

    def __init__(self, job: str, console: Console, live: bool, status_tracker=None, poll_s: float = 0.5):
        self.job, self.console, self.live = job, console, live
        self.status_tracker, self.poll_s = status_tracker, poll_s
        self._bars: Progress | None = None
        self._step_task: TaskID | None = None
        self._stage_tasks: dict[int, TaskID] = {}
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._step = ""

    def __enter__(self) -> "JobProgress":
        if self.live:
            self._bars = Progress(SpinnerColumn(), TextColumn("{task.description}"), _Bar(), _Count(),
                                  TimeElapsedColumn(), console=self.console, transient=True)
            self._bars.start()
            self._step_task = self._bars.add_task(self.job, total=None)
            if self.status_tracker is not None:
                self._poll(self._show_stages)
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join()
        if self._bars is not None:
            self._bars.stop()

    def step(self, message: str) -> None:
        """The job moved on to ``message``: the top line of the bars, or one line of the log."""
        self._step = message
        if self._bars is not None:
            self._bars.update(self._step_task, description=f"{self.job}: {message}")
        else:
            self.console.print(f"{self.job}: {message}", markup=False, highlight=False)

    @contextmanager
    def training(self, folder, epochs: int) -> Iterator[None]:
        """While the block trains: a bar of epochs with rank 0's step and samples/s, read from ``folder``."""
        if self._bars is None:
            yield
            return
        task = self._bars.add_task("training", total=epochs)
        stop = threading.Event()

        def show() -> None:
            state = read_training_state(folder)
            if state is not None:
                self._bars.update(task, completed=state.epoch, description=f"training: {state.line()}")

        thread = self._poll(show, stop)
        try:
            yield
        finally:
            stop.set()
            thread.join()
            self._bars.remove_task(task)

    def _poll(self, show: Callable[[], None], stop: threading.Event | None = None) -> threading.Thread:
        stop = stop or self._stop

        def loop() -> None:
            while not (stop.is_set() or self._stop.is_set()):
                try:
                    show()
                except Exception as err:  # a progress display must never take the job down
                    log.debug("progress display: %s", err)
                stop.wait(self.poll_s)

        thread = threading.Thread(target=loop, name=f"{self.job}-progress", daemon=True)
        thread.start()
        self._threads.append(thread)
        return thread

    def _show_stages(self) -> None:
        running = {stage.stage_id: stage for stage in running_stages(self.status_tracker)}
        for stage_id in [s for s in self._stage_tasks if s not in running]:
            self._bars.remove_task(self._stage_tasks.pop(stage_id))
        for stage_id, stage in running.items():
            if stage_id not in self._stage_tasks:
                # Spark's stage names are call sites ("save at NativeMethodAccessorImpl.java:0"): the
                # step line above says what the stage is for.
                self._stage_tasks[stage_id] = self._bars.add_task(f"  Spark stage {stage_id}", total=stage.tasks)
            self._bars.update(self._stage_tasks[stage_id], completed=stage.done, total=stage.tasks)
