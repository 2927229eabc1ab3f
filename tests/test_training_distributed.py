"""The training stage end to end on two ranks: Horovod-on-Spark and TorchDistributor, a killed rank, the card.

One small clean-like Delta table (three training files, so two ranks get uneven shares); real
runs shared by the tests: an uninterrupted Horovod run, a Horovod run whose rank 1 is SIGKILLed
after its first epoch with no restarts allowed and then started again by hand, a Horovod run
whose rank 1 is SIGKILLed mid-epoch and which the job restarts by itself, and a TorchDistributor run.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from pyspark.sql import functions as F
from pyspark.testing import assertDataFrameEqual

from shardlake import delta_io, registry
from shardlake.config import load_config
from shardlake.lake import Lake
from shardlake.stages import train
from shardlake.training.sample import flights_like_frame, write_clean_table
from shardlake.training.checkpoint import load_checkpoint

# Horovod's driver thread reports the killed run's Spark job as an unhandled thread exception.
pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")]
REPO = Path(__file__).resolve().parent.parent
TIMING = ("seconds", "samples_per_second", "samples_per_second_per_worker")


def _config(lake: Lake, *overrides: str):
    return load_config([REPO / "conf" / "base.yaml"],
                       [f"lake.root={lake.root}", "train.epochs=2", "train.batch_size=256", "train.num_proc=2",
                        "train.start_timeout_s=300", *overrides])


@pytest.fixture(scope="module")
def runs(spark, tmp_path_factory):
    lake = Lake.at(tmp_path_factory.mktemp("distributed") / "lake")
    frame = flights_like_frame(4000, seed=3, shards=3)
    version = write_clean_table(spark, lake.table("flights", "clean"), frame)
    quiet = lambda _: None  # noqa: E731
    _, a = train.fit(spark, lake, _config(lake), "test-code", run_id="a", log=quiet)
    with pytest.raises(train.TrainingError) as killed:  # no restarts allowed: the job fails and says how to resume
        train.fit(spark, lake, _config(lake, "train.max_restarts=0"), "test-code", run_id="k", kill_after_epoch=0,
                  log=quiet)
    _, k = train.fit(spark, lake, _config(lake), "test-code", run_id="k", log=quiet)
    restarts: list[str] = []
    _, r = train.fit(spark, lake, _config(lake, "train.max_restarts=1"), "test-code", run_id="r",
                     kill_during_epoch=1, log=lambda line: restarts.append(line) if "restart" in line else None)
    _, t = train.fit(spark, lake, _config(lake, "train.backend=torch_distributor"), "test-code", run_id="t", log=quiet)
    return {"lake": lake, "frame": frame, "version": version, "a": a, "k": k, "r": r, "t": t, "killed": killed.value,
            "restart_log": restarts}


def _train_rows(runs) -> int:
    return int((runs["frame"].split == "train").sum())


def _epoch(card: dict, epoch: int) -> dict:
    return {k: v for k, v in card["history"][epoch].items() if k not in TIMING}


def test_horovod_trains_on_every_training_row_each_epoch(runs):
    assert [h["rows"] for h in runs["a"]["history"]] == [_train_rows(runs)] * 2


def test_torch_distributor_trains_on_every_training_row_each_epoch(runs):
    assert [h["rows"] for h in runs["t"]["history"]] == [_train_rows(runs)] * 2


def test_torch_distributor_runs_the_same_training_to_a_useful_model(runs):
    assert (runs["t"]["backend"], len(runs["t"]["history"])) == ("torch_distributor", 2)
    assert runs["t"]["test_metrics"]["auc"] > 0.6


def test_two_runs_of_one_config_and_table_version_give_the_same_metrics(runs):
    # Run k's first epoch ran in full, independently of run a, before its rank was killed.
    assert _epoch(runs["k"], 0) == _epoch(runs["a"], 0)


def test_a_killed_rank_fails_the_run_with_a_resume_hint(runs):
    # Horovod names the first process to exit: the killed rank (exit code 137) or, when it is
    # quicker to notice the lost peer, the rank left waiting on it; either way the run fails.
    message = str(runs["killed"])
    assert "exited with non-zero status" in message and "start the same run again to resume" in message


def test_a_rank_killed_mid_epoch_is_recovered_by_the_job_itself(runs, reliability):
    """Issue 15: a lost rank failed the run until a person started it again."""
    r = runs["r"]
    reliability.record("a training rank SIGKILLed mid-epoch (max_restarts=1)",
                       "the job restarted the stage from the last checkpoint and finished", 0, 0)
    assert ([h["epoch"] for h in r["history"]], r["resumed_from"], r["restarts"]) == ([0, 1], 1, 1)
    assert "exited with non-zero status" in r["restart_errors"][0] and len(runs["restart_log"]) == 1


def test_the_recovered_run_ends_within_tolerance_of_an_undisturbed_one(runs):
    # Resumed from the epoch-0 checkpoint with its RNG state: the same arithmetic as run a, so the
    # tolerance (0.01 AUC) only absorbs float reduction order.
    assert [h["rows"] for h in runs["r"]["history"]] == [_train_rows(runs)] * 2
    assert runs["r"]["validation_metric"] == pytest.approx(runs["a"]["validation_metric"], abs=0.01)


def test_the_job_summary_reports_the_restart(runs):
    assert (train.summary(runs["r"])["restarts"], train.summary(runs["a"])["restarts"]) == (1, 0)


def test_an_undisturbed_run_records_no_restart(runs):
    assert (runs["a"]["restarts"], runs["a"]["restart_errors"]) == (0, [])


def test_the_rerun_resumes_after_the_checkpoint_and_runs_every_epoch(runs):
    assert (runs["k"]["resumed_from"], [h["epoch"] for h in runs["k"]["history"]]) == (1, [0, 1])


def test_the_resumed_run_ends_with_the_uninterrupted_runs_metrics(runs):
    assert (_epoch(runs["k"], 1), runs["k"]["test_metrics"]) == (_epoch(runs["a"], 1), runs["a"]["test_metrics"])


def test_the_card_records_the_table_path_and_version(runs):
    card = runs["a"]
    assert (card["table_path"], card["table_version"]) == (runs["lake"].table("flights", "clean"), runs["version"])


def test_the_card_records_the_config_and_its_hash(runs):
    config = _config(runs["lake"])
    assert (runs["a"]["config"], runs["a"]["config_hash"]) == (config.public_dump(), config.fingerprint())


def test_the_card_records_the_feature_statistics_inference_needs(runs):
    card = runs["a"]
    spec = json.loads((Path(card["model_dir"]) / "model_spec.json").read_text())
    assert {k: card["feature_stats"][k] for k in ("mean", "std", "vocab")} == {k: spec[k] for k in ("mean", "std", "vocab")}
    assert set(spec["vocab"]["carrier"]) <= set(runs["frame"].carrier)


def test_the_card_records_validation_metrics_per_epoch(runs):
    assert [set(h["validation"]) >= {"auc", "accuracy"} for h in runs["a"]["history"]] == [True, True]


def test_the_card_records_classification_test_metrics(runs):
    assert set(runs["a"]["test_metrics"]) >= {"accuracy", "precision", "recall", "auc"}


def test_the_card_records_code_version_and_seconds(runs):
    assert runs["a"]["code_version"] == "test-code" and runs["a"]["seconds"] > 0


def test_the_card_records_the_sha256_of_the_weights_it_registers(runs):
    weights = Path(runs["a"]["model_dir"]) / "model.safetensors"
    assert runs["a"]["weights_sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()


def test_the_card_on_disk_is_the_card_returned(runs):
    on_disk = json.loads((Path(runs["a"]["model_dir"]) / "card.json").read_text())
    assert on_disk == json.loads(json.dumps(runs["a"], default=str))


def test_the_training_curve_is_a_png_in_the_run_folder(runs):
    assert (Path(runs["a"]["model_dir"]) / "training_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_registry_lists_every_trained_version_as_a_candidate(spark, runs):
    table = delta_io.read_version(spark, runs["lake"].registry()).select("model_version", "stage", "table_version")
    expected = spark.createDataFrame([(v, "candidate", runs["version"]) for v in ("a", "k", "r", "t")], table.schema)
    assertDataFrameEqual(table, expected)


def test_the_registry_holds_each_versions_card(spark, runs):
    assert registry.model_card(spark, runs["lake"].registry(), "k")["resumed_from"] == 1


def test_rows_of_the_registry_point_at_the_model_folders(spark, runs):
    rows = delta_io.read_version(spark, runs["lake"].registry()).select("model_version", F.col("model_dir")).collect()
    assert all((Path(r["model_dir"]) / "model.safetensors").exists() for r in rows)


def test_adam_s_learning_rate_is_not_scaled_by_the_two_ranks_by_default(runs):
    state = load_checkpoint(Path(runs["a"]["model_dir"]))
    assert state["optimizer"]["param_groups"][0]["lr"] == pytest.approx(runs["a"]["config"]["train"]["learning_rate"])


def test_the_card_records_the_training_splits_binned_distributions(runs):
    # Fewer training rows than train.reference_sample_rows: every one is counted, as numpy counts them.
    reference = runs["a"]["reference"]["distance"]
    train = runs["frame"][runs["frame"].split == "train"]["distance"].to_numpy(dtype=float)
    finite = train[~np.isnan(train)]
    expected = [int(np.isnan(train).sum()),
                *np.bincount(np.searchsorted(reference["edges"], finite, side="right"),
                             minlength=len(reference["edges"]) + 1)]
    assert reference["counts"] == expected and len(reference["edges"]) >= 5


@pytest.fixture(scope="module")
def s3_killed(spark, s3_server):
    """A Horovod run on a lake on the test S3 server whose rank 1 is SIGKILLed mid-epoch (one restart allowed):
    the restarted stage can only resume from the checkpoint the run folder keeps on the server."""
    s3_server.point(spark)
    lake = Lake.at(f"s3a://{s3_server.bucket('killed')}/lake", s3_server.settings)
    write_clean_table(spark, lake.table("flights", "clean"), flights_like_frame(2000, seed=3, shards=2))
    config = load_config([REPO / "conf" / "base.yaml"],
                         [f"lake.root={lake.root}", *s3_server.overrides(), "train.epochs=2", "train.batch_size=256",
                          "train.num_proc=2", "train.start_timeout_s=300", "train.max_restarts=1"])
    _, card = train.fit(spark, lake, config, "test-code", run_id="s3-killed", kill_during_epoch=1, log=lambda _: None)
    return card


def test_a_rank_killed_mid_epoch_resumes_from_the_checkpoint_on_s3(s3_killed):
    assert ([h["epoch"] for h in s3_killed["history"]], s3_killed["resumed_from"], s3_killed["restarts"]) == \
        ([0, 1], 1, 1)


def test_the_run_folder_on_s3_holds_the_checkpoint_the_kill_marker_and_the_model(s3_server, s3_killed):
    names = {key.rsplit("/", 1)[1] for key in s3_server.object_keys(s3_killed["model_dir"].split("://", 1)[1])}
    assert {"checkpoint.pt", ".killed-in-epoch-1", "card.json", "model.safetensors", "training_curve.png"} <= names
