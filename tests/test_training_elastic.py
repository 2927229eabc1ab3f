"""Elastic training: a rank SIGKILLed mid-epoch under horovod.spark.run_elastic, and the plain pieces of it.

The runs need a Spark master that retries a failed task (``local[2,4]``), so that the killed rank's
task can come back; the suite's session allows no retry, so they run in a job process of their own
on a small clean-like table: one undisturbed elastic run, and two whose rank 1 kills itself at step
13 of the first epoch, after the commit at step 10 (commits every 10 steps). With ``min_proc`` 1 the
survivor trains on alone (Spark's retry of the lost task may join it later, about 5-10 s after the
kill here: whether it does before the run ends is timing); with ``min_proc`` 2 the survivor waits
for the retried task and the ring of two goes on from the last commit.
"""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from cluster import spark_env
from shardlake.lake import Lake
from shardlake.training.elastic import merge_observed, merge_positions, owned_parts
from shardlake.training.sample import flights_like_frame, spec_from_files, write_clean_table
from shardlake.training.worker import TrainJob, part_batches

REPO = Path(__file__).resolve().parent.parent
EPOCHS = 3

DRIVER = textwrap.dedent("""
    import json, sys
    from pathlib import Path
    from shardlake.config import load_config
    from shardlake.lake import Lake
    from shardlake.session import build_session
    from shardlake.stages import train

    lake, out = Lake.at(sys.argv[1]), Path(sys.argv[2])
    config = load_config([Path(sys.argv[3])], sys.argv[4:])
    waits = load_config([Path(sys.argv[3])], [*sys.argv[4:], "train.elastic.min_proc=2"])
    spark = build_session(config.spark.master, "elastic-test", {"spark.ui.enabled": "false"})
    quiet = lambda _: None
    _, undisturbed = train.fit(spark, lake, config, "test-code", run_id="u", log=quiet)
    _, killed = train.fit(spark, lake, config, "test-code", run_id="e", kill_during_epoch=0, kill_at_step=13,
                          log=quiet)
    _, rejoined = train.fit(spark, lake, waits, "test-code", run_id="w", kill_during_epoch=0, kill_at_step=13,
                            log=quiet)
    out.write_text(json.dumps({"u": undisturbed, "e": killed, "w": rejoined}, default=str))
""")


@pytest.fixture(scope="module")
def elastic(spark, tmp_path_factory):
    root = tmp_path_factory.mktemp("elastic")
    lake = Lake.at(root / "lake")
    frame = flights_like_frame(12000, seed=3, shards=3)
    write_clean_table(spark, lake.table("flights", "clean"), frame)
    out = root / "cards.json"
    overrides = [f"lake.root={lake.root}", "spark.master=local[2,4]", f"train.epochs={EPOCHS}",
                 "train.batch_size=256", "train.num_proc=2", "train.start_timeout_s=300", "train.max_restarts=0",
                 f"train.early_stopping_patience={EPOCHS}", "train.elastic.min_proc=1",
                 "train.elastic.commit_every_steps=10",
                 "train.elastic.timeout_s=120"]
    driver = root / "driver.py"
    driver.write_text(DRIVER)
    done = subprocess.run([sys.executable, str(driver), str(lake.root), str(out), str(REPO / "conf" / "base.yaml"),
                           *overrides], cwd=REPO, env=spark_env(), capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    cards = json.loads(out.read_text())
    return {"frame": frame, **cards}


def _train_rows(elastic) -> int:
    return int((elastic["frame"].split == "train").sum())


@pytest.mark.slow
@pytest.mark.reliability
def test_a_rank_killed_mid_epoch_leaves_the_survivor_training_alone_to_the_end(elastic, reliability):
    card = elastic["e"]
    reliability.record("elastic: one of 2 training ranks SIGKILLed mid-epoch (run_elastic, min_proc 1)",
                       f"finished {len(card['history'])} epochs; ring sizes {card['elastic']['sizes']}, "
                       f"{card['elastic']['resets']} reset(s), {card['restarts']} job restart(s)", 0, 0)
    assert ([h["epoch"] for h in card["history"]], card["restarts"]) == (list(range(EPOCHS)), 0)
    assert 1 in card["elastic"]["sizes"] and card["elastic"]["resets"] >= 1


@pytest.mark.slow
@pytest.mark.reliability
def test_with_min_proc_two_the_lost_rank_s_retried_task_is_taken_in_again(elastic, reliability):
    card = elastic["w"]
    ranks = [h["ranks"] for h in card["history"]]
    reliability.record("elastic: a rank SIGKILLed, min_proc 2: the retried Spark task joins the ring again",
                       f"ranks per epoch {ranks}, {card['elastic']['resets']} reset(s)", 0, 0)
    assert (ranks, card["restarts"]) == ([2] * EPOCHS, 0)
    assert card["elastic"]["resets"] >= 1


@pytest.mark.slow
def test_every_row_is_trained_on_once_per_epoch_when_the_ring_rolls_back_and_grows_again(elastic):
    assert [h["rows"] for h in elastic["w"]["history"]] == [_train_rows(elastic)] * EPOCHS


@pytest.mark.slow
def test_every_training_row_is_trained_on_once_in_each_epoch_across_the_reset(elastic):
    assert [h["rows"] for h in elastic["e"]["history"]] == [_train_rows(elastic)] * EPOCHS


@pytest.mark.slow
def test_the_run_with_a_killed_rank_ends_within_tolerance_of_the_undisturbed_one(elastic):
    # The survivor trains the rest of the epoch alone (other batches per step): close, not equal.
    killed, undisturbed = elastic["e"]["validation_metric"], elastic["u"]["validation_metric"]
    assert abs(killed - undisturbed) <= 0.05, (killed, undisturbed)


@pytest.mark.slow
def test_an_undisturbed_elastic_run_trains_every_row_on_two_ranks_without_a_reset(elastic):
    card = elastic["u"]
    assert card["elastic"] == {"resets": 0, "sizes": [2]}
    assert [(h["rows"], h["ranks"]) for h in card["history"]] == [(_train_rows(elastic), 2)] * EPOCHS


def test_a_ring_of_two_shares_three_parts_round_robin():
    assert [owned_parts(3, rank, 2) for rank in (0, 1)] == [[0, 2], [1]]


def test_a_rank_left_alone_owns_every_part():
    assert owned_parts(2, 0, 1) == [0, 1]


def test_positions_are_merged_from_the_ranks_that_own_the_parts():
    gathered = np.array([4, -1, 7, -1, 5, -1])  # rank 0 owns parts 0 and 2, rank 1 part 1
    assert merge_positions(gathered, 3) == [4, 5, 7]


def test_the_ring_history_takes_the_most_resets_and_every_size():
    results = [{"elastic": {"resets": 2, "sizes": [2, 1, 2]}}, {"elastic": {"resets": 0, "sizes": [2]}}]
    assert merge_observed(results) == {"resets": 2, "sizes": [1, 2]}


@pytest.fixture(scope="module")
def two_part_job(tmp_path_factory):
    import pyarrow as pa
    import pyarrow.parquet as pq

    root = tmp_path_factory.mktemp("parts")
    frame = flights_like_frame(1200, seed=7)
    files = []
    for i, chunk in enumerate(np.array_split(frame, 4)):
        path = root / f"part-{i}.parquet"
        pq.write_table(pa.Table.from_pandas(chunk, preserve_index=False), path)
        files.append(str(path))
    numeric, categorical = ["distance", "temp"], ["carrier"]
    spec = spec_from_files(files, numeric, categorical, "binary", "delayed", hidden=[4])
    return TrainJob(train_files=files, validation_files=files[:1], test_files=[], spec=spec.to_dict(),
                    label="delayed", run_dir=str(root), epochs=1, batch_size=50, learning_rate=0.01, seed=5,
                    early_stopping_patience=1)


def _rows(stream) -> list[list]:
    return [[part.tolist() for part in batch] for batch in stream]


def test_a_part_taken_up_after_its_committed_batches_gives_exactly_the_rest(two_part_job):
    from shardlake.models.tabular import ModelSpec

    spec = ModelSpec.from_dict(two_part_job.spec)
    whole = _rows(part_batches(two_part_job, spec, 1, 1, 2))
    rest = _rows(part_batches(two_part_job, spec, 1, 1, 2, skip=3))
    assert len(whole) > 3 and rest == whole[3:]
