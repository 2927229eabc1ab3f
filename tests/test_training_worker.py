"""The rank function in one process (the single-process Comm): learning, logging, early stopping, checkpoints."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from shardlake.training.sample import flights_like_frame, spec_from_files
from shardlake.training.checkpoint import CHECKPOINT, CheckpointError, load_checkpoint
from shardlake.training.comm import Comm
from shardlake.training.worker import (HISTORY, TrainJob, effective_learning_rate, run_training, should_stop,
                                       train_and_test)

NUMERIC = ["sched_dep_hour", "distance", "month", "day_of_week", "temp", "humid", "wind_speed", "precip", "visib",
           "seats", "engines"]
CATEGORICAL = ["carrier", "origin", "dest"]


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """One intra-op thread, as each rank gets on this machine: a tiny model on two busy cores runs
    many times slower with threads spinning against each other."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def splits(tmp_path_factory):
    """Two Parquet files per split of a flights-like table, and the rows."""
    root = tmp_path_factory.mktemp("splits")
    frame = flights_like_frame(2400, seed=11)
    files = {}
    for split in ("train", "validation", "test"):
        part = frame[frame.split == split]
        files[split] = []
        for i, chunk in enumerate(np.array_split(part, 2)):
            path = root / f"{split}-{i}.parquet"
            pq.write_table(pa.Table.from_pandas(chunk, preserve_index=False), path)
            files[split].append(str(path))
    return files, frame


def make_job(splits, run_dir: Path, kind: str = "binary", **changes) -> TrainJob:
    files, _ = splits
    label = "delayed" if kind == "binary" else "arr_delay"
    spec = spec_from_files(files["train"], NUMERIC, CATEGORICAL, kind, label, hidden=[16, 8])
    run_dir.mkdir(parents=True, exist_ok=True)
    job = TrainJob(train_files=files["train"], validation_files=files["validation"], test_files=files["test"],
                   spec=spec.to_dict(), label=label, run_dir=str(run_dir), epochs=2, batch_size=64,
                   learning_rate=0.003, seed=5, early_stopping_patience=2)
    return dataclasses.replace(job, **changes)


def test_regression_on_arr_delay_beats_predicting_the_mean(splits, tmp_path):
    _, frame = splits
    result = train_and_test(make_job(splits, tmp_path, kind="regression", epochs=3), Comm(), log=lambda _: None)
    spread = frame.loc[frame.split == "test", "arr_delay"].std(ddof=0)
    assert result["test"]["rmse"] < 0.85 * spread and result["test"]["mae"] < result["test"]["rmse"]


def test_a_binary_model_ranks_delays_better_than_chance(splits, tmp_path):
    result = train_and_test(make_job(splits, tmp_path), Comm(), log=lambda _: None)
    assert result["test"]["auc"] > 0.7


def test_rank_zero_logs_loss_metric_and_throughput_each_epoch(splits, tmp_path):
    lines: list[str] = []
    run_training(make_job(splits, tmp_path), Comm(), log=lines.append)
    epoch_lines = [line for line in lines if line.startswith("epoch ")]
    assert len(epoch_lines) == 2
    assert all("loss" in line and "validation auc" in line and "samples/s" in line for line in epoch_lines)


def test_the_run_folder_holds_the_history_of_every_epoch(splits, tmp_path):
    run_training(make_job(splits, tmp_path), Comm(), log=lambda _: None)
    history = json.loads((tmp_path / HISTORY).read_text())
    assert [h["epoch"] for h in history] == [0, 1] and all(h["samples_per_second"] > 0 for h in history)


def test_every_epoch_counts_every_training_row(splits, tmp_path):
    _, frame = splits
    result = run_training(make_job(splits, tmp_path), Comm(), log=lambda _: None)
    assert [h.rows for h in result.history] == [int((frame.split == "train").sum())] * 2


def test_training_stops_early_when_validation_stops_improving(splits, tmp_path):
    # A zero learning rate never changes the model, so the metric never improves after epoch 0.
    job = make_job(splits, tmp_path, learning_rate=0.0, epochs=6, early_stopping_patience=2)
    result = run_training(job, Comm(), log=lambda _: None)
    assert ([h.epoch for h in result.history], result.best_epoch) == ([0, 1, 2], 0)


@pytest.mark.parametrize("best_epoch,epoch,expected", [(-1, 5, False), (0, 2, False), (0, 3, True), (4, 6, False)])
def test_should_stop_after_patience_epochs(best_epoch, epoch, expected):
    assert should_stop(best_epoch, epoch, patience=2) is expected


def _without_timing(result: dict) -> tuple:
    timing = ("seconds", "samples_per_second", "samples_per_second_per_worker")
    return [{k: v for k, v in h.items() if k not in timing} for h in result["history"]], result["test"]


def test_two_runs_of_the_same_job_give_the_same_metrics(splits, tmp_path):
    first = train_and_test(make_job(splits, tmp_path / "a"), Comm(), log=lambda _: None)
    second = train_and_test(make_job(splits, tmp_path / "b"), Comm(), log=lambda _: None)
    assert _without_timing(first) == _without_timing(second)


def test_a_run_that_failed_after_its_first_epoch_resumes_and_finishes_every_epoch(splits, tmp_path):
    with pytest.raises(RuntimeError, match="injected failure"):
        run_training(make_job(splits, tmp_path, fail_after_epoch=0), Comm(), log=lambda _: None)
    resumed = run_training(make_job(splits, tmp_path, fail_after_epoch=0), Comm(), log=lambda _: None)
    assert (resumed.resumed_from, [h.epoch for h in resumed.history]) == (1, [0, 1])


def test_a_resumed_run_ends_where_an_uninterrupted_one_does(splits, tmp_path):
    uninterrupted = run_training(make_job(splits, tmp_path / "whole"), Comm(), log=lambda _: None)
    with pytest.raises(RuntimeError):
        run_training(make_job(splits, tmp_path / "cut", fail_after_epoch=0), Comm(), log=lambda _: None)
    resumed = run_training(make_job(splits, tmp_path / "cut"), Comm(), log=lambda _: None)
    assert ([h.train_loss for h in resumed.history], resumed.history[-1].validation) == (
        [h.train_loss for h in uninterrupted.history], uninterrupted.history[-1].validation)


@pytest.mark.parametrize(("scaling", "ranks", "expected"), [("none", 4, 0.003), ("linear", 4, 0.012),
                                                             ("linear", 1, 0.003)])
def test_the_learning_rate_is_scaled_by_ranks_only_when_configured(scaling, ranks, expected):
    assert effective_learning_rate(0.003, scaling, ranks) == pytest.approx(expected)


def test_a_resumed_run_uses_the_learning_rate_of_its_own_rank_count(splits, tmp_path):
    # A checkpoint saved by a run whose optimizer had another rank count's (linearly scaled) rate.
    job = make_job(splits, tmp_path, epochs=2, fail_after_epoch=0, lr_scaling="linear")
    with pytest.raises(RuntimeError, match="injected failure"):
        run_training(job, Comm(), log=lambda _: None)
    state = load_checkpoint(tmp_path, job.fingerprint())
    state["optimizer"]["param_groups"][0]["lr"] = 4 * job.learning_rate
    torch.save(state, tmp_path / CHECKPOINT)
    run_training(job, Comm(), log=lambda _: None)  # one rank now
    assert load_checkpoint(tmp_path, job.fingerprint())["optimizer"]["param_groups"][0]["lr"] == pytest.approx(
        job.learning_rate)


def test_the_checkpoint_holds_model_optimizer_epoch_and_rng_state(splits, tmp_path):
    job = make_job(splits, tmp_path, epochs=1)
    run_training(job, Comm(), log=lambda _: None)
    state = load_checkpoint(tmp_path, job.fingerprint())
    assert {"epoch", "model", "optimizer", "torch_rng"} <= set(state) and state["epoch"] == 0
    assert isinstance(state["torch_rng"], torch.Tensor) and state["optimizer"]["state"]


def test_a_checkpoint_of_another_job_is_not_resumed(splits, tmp_path):
    run_training(make_job(splits, tmp_path, epochs=1), Comm(), log=lambda _: None)
    with pytest.raises(CheckpointError, match="another job"):
        run_training(make_job(splits, tmp_path, epochs=1, learning_rate=0.01), Comm(), log=lambda _: None)


def test_the_job_fingerprint_depends_on_the_code_version(splits, tmp_path):
    job = make_job(splits, tmp_path, code_version="1.0+aaaaaaa")
    assert job.fingerprint() != dataclasses.replace(job, code_version="1.0+bbbbbbb").fingerprint()


def test_a_checkpoint_written_by_other_code_is_not_resumed(splits, tmp_path):
    run_training(make_job(splits, tmp_path, epochs=1, code_version="1.0+aaaaaaa"), Comm(), log=lambda _: None)
    with pytest.raises(CheckpointError, match=r"written by code version 1\.0\+aaaaaaa, this run's is 1\.0\+bbbbbbb"):
        run_training(make_job(splits, tmp_path, epochs=1, code_version="1.0+bbbbbbb"), Comm(), log=lambda _: None)


def test_the_best_model_is_saved_as_safetensors_only(splits, tmp_path):
    run_training(make_job(splits, tmp_path, epochs=1), Comm(), log=lambda _: None)
    assert sorted(p.name for p in (tmp_path / "best").iterdir()) == ["model.safetensors", "model_spec.json"]
