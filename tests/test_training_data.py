"""Training input: one Delta version's exact files through Petastorm, sharded by rank, shuffled, each row once."""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from pyspark.sql import functions as F

from shardlake import delta_io, delta_log
from shardlake.config import load_config
from shardlake.lake import Lake
from shardlake.models.tabular import ModelSpec
from shardlake.stages import train
from shardlake.training.data import LoaderOptions, batches, row_group_count, shard_for
from shardlake.training.sample import flights_like_frame, write_clean_table
from shardlake.transforms.stats import fit_feature_stats

REPO = Path(__file__).resolve().parent.parent
# Categorical features that are not strings, and the codes they must get, written out by hand:
# vocabularies gate [1, 2, 3] and flag [False, True], code = index + 1, 0 for a missing value.
TYPED_CATEGORY_ROWS = [(3, True, 1), (1, False, 0), (3, True, 1), (2, True, 0), (None, None, 1), (3, False, 0)]
TYPED_CATEGORY_CODES = [[3, 2], [1, 1], [3, 2], [2, 2], [0, 0], [3, 1]]
# row_id as the only feature: every delivered row names itself.
ID_SPEC = ModelSpec(kind="binary", numeric=["row_id"], categorical=[], vocab={}, mean={"row_id": 0.0},
                    std={"row_id": 1.0})


@pytest.fixture(scope="module")
def versions(spark, tmp_path_factory):
    """A clean-like table: v0 with 3 files per split, then v1 overwriting it with other rows."""
    lake = Lake.at(tmp_path_factory.mktemp("data") / "lake")
    path = lake.table("flights", "clean")
    v0 = flights_like_frame(3000, seed=1, shards=3)
    v1 = flights_like_frame(2000, seed=2, shards=2).assign(row_id=lambda f: f.row_id + 100_000)
    write_clean_table(spark, path, v0)
    write_clean_table(spark, path, v1)
    return {"lake": lake, "path": path, 0: v0, 1: v1}


def config_for(lake: Lake, *overrides: str):
    return load_config([REPO / "conf" / "base.yaml"], [f"lake.root={lake.root}", *overrides])


def delivered_ids(files, rank: int, size: int, seed: int, **options) -> list[int]:
    return [int(i) for numeric, _, _ in batches(files, ID_SPEC, "delayed", 64, rank, size, seed=seed,
                                                options=LoaderOptions(**options)) for i in numeric[:, 0]]


def train_ids(frame) -> Counter:
    return Counter(frame.loc[frame.split == "train", "row_id"].tolist())


def test_every_training_row_is_delivered_exactly_once_per_epoch_across_ranks(spark, versions):
    files = delta_log.snapshot_files(versions["path"], 0, [("split", "=", "train")])
    assert len(files) == 3  # uneven: two ranks share three row groups
    for epoch in range(2):
        got = Counter(delivered_ids(files, 0, 2, seed=epoch) + delivered_ids(files, 1, 2, seed=epoch))
        assert got == train_ids(versions[0]), f"epoch {epoch}"


def test_ranks_read_disjoint_shares(spark, versions):
    files = delta_log.snapshot_files(versions["path"], 0, [("split", "=", "train")])
    assert not set(delivered_ids(files, 0, 2, seed=0)) & set(delivered_ids(files, 1, 2, seed=0))


def test_with_fewer_row_groups_than_ranks_rank_zero_reads_everything(spark, versions):
    files = delta_log.snapshot_files(versions["path"], 0, [("split", "=", "train")])
    assert row_group_count(files) < 4
    assert [shard_for(files, rank, 4) for rank in (0, 3)] == [(files, 0, 1), ([], 0, 1)]


def test_training_reads_the_planned_version_not_the_folder(spark, versions):
    plan = train.plan(spark, versions["lake"], config_for(versions["lake"], "train.table_version=0"), run_id="v0")
    folder_files = list(Path(versions["path"]).glob("split=train/*.parquet"))
    assert len(folder_files) > len(plan.job.train_files)  # v1's files lie in the same folder
    assert Counter(delivered_ids(plan.job.train_files, 0, 1, seed=0)) == train_ids(versions[0])


def test_without_a_version_the_latest_is_used_and_recorded(spark, versions):
    plan = train.plan(spark, versions["lake"], config_for(versions["lake"]), run_id="latest")
    assert plan.table_version == delta_io.latest_version(spark, versions["path"]) == 1
    assert Counter(delivered_ids(plan.job.train_files, 0, 1, seed=0)) == train_ids(versions[1])


def test_a_plan_has_each_splits_files_of_that_version(spark, versions):
    plan = train.plan(spark, versions["lake"], config_for(versions["lake"], "train.table_version=0"), run_id="v0")
    rows = (delta_io.read_version(spark, versions["path"], 0).groupBy("split").count()
            .select("split", F.col("count").cast("int")).collect())
    expected = {r["split"]: r["count"] for r in rows}
    got = {s: len(delivered_ids(getattr(plan.job, f"{s}_files"), 0, 1, seed=0)) for s in ("train", "validation", "test")}
    assert got == expected


def test_the_same_seed_gives_the_same_order(spark, versions):
    files = delta_log.snapshot_files(versions["path"], 0, [("split", "=", "train")])
    assert delivered_ids(files, 0, 1, seed=5) == delivered_ids(files, 0, 1, seed=5)


def test_two_reader_threads_deliver_every_row_exactly_once(spark, versions):
    # Only loader_workers=1 promises a reproducible order (threads finish row groups in any order).
    files = delta_log.snapshot_files(versions["path"], 0, [("split", "=", "train")])
    train = versions[0][versions[0].split == "train"]
    assert sorted(delivered_ids(files, 0, 1, seed=5, workers=2)) == sorted(train.row_id.tolist())


def test_another_epoch_seed_gives_another_order(spark, versions):
    files = delta_log.snapshot_files(versions["path"], 0, [("split", "=", "train")])
    assert delivered_ids(files, 0, 1, seed=1) != delivered_ids(files, 0, 1, seed=2)


def test_the_shuffle_window_mixes_rows_of_different_files(spark, versions):
    files = delta_log.snapshot_files(versions["path"], 0, [("split", "=", "train")])
    train = versions[0][versions[0].split == "train"]
    shard_of = dict(zip(train.row_id, train.shard))
    first_batch = delivered_ids(files, 0, 1, seed=0, shuffle_buffer=10_000)[:64]
    assert len({shard_of[i] for i in first_batch}) == 3


def test_batches_have_the_requested_size_except_the_last(spark, versions):
    files = delta_log.snapshot_files(versions["path"], 0, [("split", "=", "train")])
    sizes = [len(target) for _, _, target in batches(files, ID_SPEC, "delayed", 100, seed=0)]
    assert set(sizes[:-1]) == {100} and 0 < sizes[-1] <= 100


def test_a_reader_failure_reaches_the_training_loop(spark, versions, tmp_path):
    files = delta_log.snapshot_files(versions["path"], 0, [("split", "=", "train")])
    broken = tmp_path / "broken.parquet"
    broken.write_bytes(Path(files[0].removeprefix("file://")).read_bytes()[:-100])  # a torn file
    with pytest.raises(pa.ArrowInvalid, match="footer"):  # raised in the prefetch thread, re-raised here
        list(batches([str(broken), *files[1:]], ID_SPEC, "delayed", 64, seed=0))


def test_labels_arrive_with_their_rows(spark, versions):
    files = delta_log.snapshot_files(versions["path"], 0, [("split", "=", "train")])
    label_of = dict(zip(versions[0].row_id, versions[0].delayed))
    pairs = [(int(i), float(y)) for numeric, _, target in batches(files, ID_SPEC, "delayed", 64, seed=0)
             for i, y in zip(numeric[:, 0], target)]
    assert all(label_of[i] == y for i, y in pairs) and np.isclose(len(pairs), len(train_ids(versions[0])))


def test_a_regression_plan_carries_the_labels_training_scale(spark, versions):
    config = config_for(versions["lake"], "train.table_version=0", "dataset.label.column=arr_delay",
                        "dataset.label.kind=regression")
    plan = train.plan(spark, versions["lake"], config, run_id="regression")
    labels = versions[0].loc[versions[0].split == "train", "arr_delay"]
    assert (plan.spec.kind, plan.job.label) == ("regression", "arr_delay")
    assert (plan.spec.target_mean, plan.spec.target_std) == pytest.approx((labels.mean(), labels.std()))


def test_a_plan_uses_the_configured_architecture_and_loader(spark, versions):
    config = config_for(versions["lake"], "train.architecture=linear", "train.loader_pool=dummy",
                        "train.shuffle_buffer=5000")
    plan = train.plan(spark, versions["lake"], config, run_id="linear")
    assert (plan.spec.architecture, plan.job.loader.pool, plan.job.loader.shuffle_buffer) == ("linear", "dummy", 5000)


def test_int_and_bool_categories_reach_training_as_their_vocabulary_indices(spark, tmp_path):
    df = spark.createDataFrame(TYPED_CATEGORY_ROWS, "gate int, flag boolean, delayed int").coalesce(1)
    df.write.parquet(str(tmp_path / "typed"))
    stats = fit_feature_stats(df, [], ["gate", "flag"], max_categories=10)
    spec = ModelSpec(kind="binary", numeric=[], categorical=["gate", "flag"], vocab=stats.vocab, mean={}, std={})
    files = sorted(str(p) for p in (tmp_path / "typed").glob("*.parquet"))
    codes = [row.tolist() for _, categorical, _ in batches(files, spec, "delayed", 64, shuffle=False)
             for row in categorical]
    assert codes == TYPED_CATEGORY_CODES


@pytest.fixture(scope="module")
def s3_versions(spark, s3_server):
    """The same two versions as ``versions``, in a lake on the test S3 server (both in one prefix)."""
    s3_server.point(spark)
    lake = Lake.at(f"s3a://{s3_server.bucket('loader')}/lake", s3_server.settings)
    path = lake.table("flights", "clean")
    v0 = flights_like_frame(3000, seed=1, shards=3)
    write_clean_table(spark, path, v0)
    write_clean_table(spark, path, flights_like_frame(2000, seed=2, shards=2))
    return {"path": path, 0: v0, "store": s3_server.settings}


def test_every_training_row_of_a_version_on_s3_is_delivered_exactly_once_across_ranks(s3_versions):
    files = delta_log.snapshot_files(s3_versions["path"], 0, [("split", "=", "train")])
    assert files and all(f.startswith("s3://") for f in files)
    store = s3_versions["store"]
    got = Counter(delivered_ids(files, 0, 2, seed=0, store=store) + delivered_ids(files, 1, 2, seed=0, store=store))
    assert got == train_ids(s3_versions[0])
