"""A training run's identity (stages/train.py): the code version names the model and guards its checkpoints,
a finished run is not trained or registered again, and one run folder holds one run at a time.

Most tests plan runs or are refused before any worker starts (a spy in place of the backends fails
them if one does); one module fixture trains once (one process, one epoch) and runs it again.
"""
from __future__ import annotations

import hashlib
import re
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from pyspark.sql import functions as F

from shardlake import delta_io, registry
from shardlake.config import load_config
from shardlake.lake import Lake
from shardlake.models.tabular import WEIGHTS_FILE, build_model
from shardlake.stages import train
from shardlake.training.sample import flights_like_frame, write_clean_table
from shardlake.training.checkpoint import save_checkpoint

REPO = Path(__file__).resolve().parent.parent
CODE = "0.1.0+aaaaaaa"
OTHER_CODE = "0.1.0+bbbbbbb"
BACKENDS = ("_run_horovod", "_run_torch_distributor")
# Holds an exclusive flock on argv[1] until killed; says "held" once it has it.
HOLD_LOCK = ("import fcntl, sys, time; f = open(sys.argv[1], 'a'); fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB); "
             "print('held', flush=True); time.sleep(600)")
# Exits 0 if it can take the flock on argv[1] at once, 1 if another process holds it.
TRY_LOCK = ("import fcntl, sys; f = open(sys.argv[1], 'a')\n"
            "try:\n    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)\nexcept BlockingIOError:\n    sys.exit(1)")


def _config(lake: Lake, *overrides: str):
    """The cheapest real training: one process, one epoch."""
    return load_config([REPO / "conf" / "base.yaml"],
                       [f"lake.root={lake.root}", "train.epochs=1", "train.batch_size=256", "train.num_proc=1",
                        "train.backend=horovod", "train.start_timeout_s=300", *overrides])


def _clean_lake(spark, tmp_path_factory, name: str) -> Lake:
    lake = Lake.at(tmp_path_factory.mktemp(name) / "lake")
    write_clean_table(spark, lake.table("flights", "clean"), flights_like_frame(2000, seed=3, shards=2))
    return lake


@pytest.fixture(scope="module")
def lake(spark, tmp_path_factory) -> Lake:
    """A lake holding only a small clean table: for runs that are planned or refused, never trained."""
    return _clean_lake(spark, tmp_path_factory, "identity")


@pytest.fixture()
def no_training(monkeypatch) -> list:
    """Backends that record a call and fail at once: a test that reaches one fails in seconds, not minutes."""
    calls: list = []

    def refuse(*args, **_):
        calls.append(args)
        raise AssertionError("a training worker was started")

    for name in BACKENDS:
        monkeypatch.setattr(train, name, refuse)
    return calls


@contextmanager
def lock_held_elsewhere(path: Path) -> Iterator[subprocess.Popen]:
    """Another process holding the flock on ``path`` while inside."""
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        yield holder
    finally:
        holder.kill()
        holder.wait()
        holder.stdout.close()


def _free_for_another_process(path: Path) -> bool:
    return subprocess.run([sys.executable, "-c", TRY_LOCK, str(path)], timeout=60).returncode == 0


def _run_folder(lake: Lake, run_id: str) -> Path:
    folder = lake.model_dir("flights", run_id)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


# --- the model version -------------------------------------------------------------------------

def test_the_model_version_depends_on_the_code_version():
    assert train.model_version_for("flights", 3, "c0ffee", CODE) != train.model_version_for("flights", 3, "c0ffee",
                                                                                             OTHER_CODE)


def test_the_model_version_depends_on_the_config_hash():
    assert train.model_version_for("flights", 3, "c0ffee", CODE) != train.model_version_for("flights", 3, "decade",
                                                                                             CODE)


def test_the_model_version_names_the_dataset_and_table_version():
    assert train.model_version_for("flights", 3, "c0ffee", CODE).startswith("flights-v3-")


def test_the_model_version_is_the_same_in_another_process():
    # Another interpreter has another str hash seed: a version built on hash() would differ there.
    script = ("import sys; from shardlake.stages.train import model_version_for; "
              f"print(model_version_for('flights', 3, 'c0ffee', {CODE!r}))")
    there = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True)
    assert there.stdout.strip() == train.model_version_for("flights", 3, "c0ffee", CODE)


def test_a_plan_of_other_code_names_another_run_folder(spark, lake):
    config = _config(lake)
    ours, theirs = (train.plan(spark, lake, config, code_version=code) for code in (CODE, OTHER_CODE))
    assert ours.job.run_dir != theirs.job.run_dir


def test_a_plan_gives_its_code_version_to_the_job(spark, lake):
    assert train.plan(spark, lake, _config(lake), code_version=CODE).job.code_version == CODE


# --- a reused run folder or run id ------------------------------------------------------------

def test_fit_refuses_a_checkpoint_of_other_code_in_a_reused_run_folder(spark, lake, no_training):
    config = _config(lake)
    theirs = train.plan(spark, lake, config, run_id="reused", code_version=OTHER_CODE)
    model = build_model(theirs.spec)
    save_checkpoint(Path(theirs.job.run_dir), model, torch.optim.Adam(model.parameters()), 0, [],
                    {"epoch": -1, "value": None}, theirs.job.fingerprint(), OTHER_CODE)
    expected = re.escape(f"written by code version {OTHER_CODE}, this run's is {CODE}")
    with pytest.raises(train.TrainingError, match=expected):
        train.fit(spark, lake, config, CODE, run_id="reused", log=lambda _: None)


def test_fit_refuses_a_run_id_registered_by_other_code(spark, lake, no_training):
    config = _config(lake)
    theirs = train.plan(spark, lake, config, run_id="taken", code_version=OTHER_CODE)
    registry.register(spark, lake.registry(), {
        "model_version": "taken", "dataset": "flights", "table_path": theirs.table_path,
        "table_version": theirs.table_version, "config_hash": theirs.config_hash, "code_version": OTHER_CODE,
        "metric_name": "auc", "validation_metric": 0.7, "model_dir": theirs.job.run_dir})
    expected = f"already registered.*{re.escape(f'code_version: registered {OTHER_CODE!r}, this run {CODE!r}')}"
    with pytest.raises(train.TrainingError, match=expected):
        train.fit(spark, lake, config, CODE, run_id="taken", log=lambda _: None)


# --- one run per run folder -------------------------------------------------------------------

def test_the_run_lock_refuses_a_folder_another_process_holds(tmp_path):
    with lock_held_elsewhere(tmp_path / train.LOCK_FILE):
        with pytest.raises(train.TrainingError, match="another run of the same model version is in progress") as err:
            with train.run_lock(tmp_path):
                pass
    assert str(tmp_path) in str(err.value)


def test_the_run_lock_holds_the_folder_against_another_process(tmp_path):
    with train.run_lock(tmp_path):
        assert not _free_for_another_process(tmp_path / train.LOCK_FILE)


def test_the_run_lock_is_released_when_its_block_ends(tmp_path):
    with train.run_lock(tmp_path):
        pass
    assert _free_for_another_process(tmp_path / train.LOCK_FILE)


def test_the_run_lock_of_a_killed_run_is_free_without_cleanup(tmp_path):
    with lock_held_elsewhere(tmp_path / train.LOCK_FILE) as holder:
        holder.kill()  # SIGKILL: the holder runs no cleanup at all
        holder.wait()
        with train.run_lock(tmp_path):
            pass


def test_fit_refuses_at_once_while_another_run_holds_the_run_folder(spark, lake, no_training):
    folder = _run_folder(lake, "busy")
    with lock_held_elsewhere(folder / train.LOCK_FILE):
        expected = re.escape(f"{folder}: another run of the same model version is in progress")
        with pytest.raises(train.TrainingError, match=expected):
            train.fit(spark, lake, _config(lake), CODE, run_id="busy", log=lambda _: None)


# --- a finished run, run again ----------------------------------------------------------------

slow = pytest.mark.slow  # the tests of the one real training run (Horovod), below


def _spy(backend, calls: list):
    def recorded(*args, **kwargs):
        calls.append(args)
        return backend(*args, **kwargs)
    return recorded


@pytest.fixture(scope="module")
def rerun(spark, tmp_path_factory) -> dict:
    """One real training run, promoted, then the same fit again with the backends behind a spy (that
    still trains, so a rerun that wrongly trains fails the tests below one by one)."""
    lake = _clean_lake(spark, tmp_path_factory, "rerun")
    config = _config(lake)
    _, first = train.fit(spark, lake, config, CODE, log=lambda _: None)
    registry.promote(spark, lake.registry(), first["model_version"])
    before = {"card": registry.model_card(spark, lake.registry(), first["model_version"]),
              "registry_version": delta_io.latest_version(spark, lake.registry())}
    calls, lines = [], []
    with pytest.MonkeyPatch.context() as patch:
        for name in BACKENDS:
            patch.setattr(train, name, _spy(getattr(train, name), calls))
        model, card = train.fit(spark, lake, config, CODE, log=lines.append)
    return {"lake": lake, "first": first, "before": before, "model": model, "card": card, "calls": calls,
            "lines": lines}


@slow
def test_the_card_records_the_sha256_of_the_registered_weights(rerun):
    weights = Path(rerun["first"]["model_dir"]) / WEIGHTS_FILE
    assert rerun["first"]["weights_sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()


@slow
def test_the_model_version_of_a_fit_names_its_code_version(rerun):
    first = rerun["first"]
    assert first["model_version"] == train.model_version_for("flights", first["table_version"],
                                                             first["config_hash"], CODE)


@slow
def test_a_rerun_of_a_finished_run_starts_no_training(rerun):
    assert rerun["calls"] == []


@slow
def test_a_rerun_of_a_finished_run_returns_its_registered_card(rerun):
    assert rerun["card"] == rerun["before"]["card"]


@slow
def test_a_rerun_of_a_finished_run_returns_its_registered_weights(rerun):
    model = rerun["model"]
    weights = (Path(rerun["first"]["model_dir"]) / WEIGHTS_FILE).read_bytes()
    assert (model.model_version, model.weights) == (rerun["first"]["model_version"], weights)


@slow
def test_a_rerun_of_a_finished_run_commits_nothing_to_the_registry(spark, rerun):
    assert delta_io.latest_version(spark, rerun["lake"].registry()) == rerun["before"]["registry_version"]


@slow
def test_a_rerun_leaves_a_promoted_model_in_production(spark, rerun):
    row = (delta_io.read_version(spark, rerun["lake"].registry())
           .where(F.col("model_version") == rerun["first"]["model_version"]).select("stage").first())
    assert row["stage"] == "production"


@slow
def test_a_rerun_of_a_finished_run_says_it_was_already_trained(rerun):
    assert [line for line in rerun["lines"] if "already trained" in line]
