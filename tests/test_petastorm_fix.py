"""The Petastorm changes: the end-of-epoch race fix and the columnar results reader, on real Petastorm."""
from __future__ import annotations

import threading

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from petastorm import make_batch_reader
from petastorm.workers_pool.thread_pool import ThreadPool
from petastorm.workers_pool.ventilator import ConcurrentVentilator
from petastorm.workers_pool.worker_base import WorkerBase

from shardlake.training.data import file_urls
from shardlake.training.petastorm_fix import OrderedEndThreadPool, columnar_results, install


class _Echo(WorkerBase):
    def process(self, *args, **kwargs):
        self.publish_func(kwargs)


def _pool_with_ventilation_under_way(pool_class):
    """A started pool whose ventilator has begun but not yet handed out its first row group."""
    gate = threading.Event()
    ventilator = ConcurrentVentilator(lambda **item: gate.wait(10), [{"piece": 0}, {"piece": 1}])
    pool = pool_class(1)
    pool.start(_Echo, None, ventilator=ventilator)
    return pool, gate, ventilator


@pytest.mark.parametrize("pool_class", [ThreadPool, OrderedEndThreadPool])
def test_before_anything_is_ventilated_the_workers_look_done(pool_class):
    # The precondition of the race: nothing ventilated yet means every worker "has finished its items".
    pool, gate, _ = _pool_with_ventilation_under_way(pool_class)
    try:
        assert ThreadPool.all_workers_done(pool)
    finally:
        gate.set()
        pool.stop()
        pool.join()


def test_the_fixed_pool_is_not_done_while_ventilation_is_under_way():
    pool, gate, _ = _pool_with_ventilation_under_way(OrderedEndThreadPool)
    try:
        assert not pool.all_workers_done()
    finally:
        gate.set()
        pool.stop()
        pool.join()


def test_the_fixed_pool_is_done_once_ventilation_finished_and_results_were_read():
    pool, gate, ventilator = _pool_with_ventilation_under_way(OrderedEndThreadPool)
    gate.set()
    ventilator._ventilation_thread.join(10)
    try:
        assert pool.all_workers_done()
    finally:
        pool.stop()
        pool.join()


@pytest.fixture()
def parquet_file(tmp_path):
    frame = pd.DataFrame({"s": ["JFK", None, "EWR", "JFK"], "i": pd.array([1, None, 3, 4], dtype="Int64"),
                          "f": [0.5, 1.5, np.nan, 2.0]})
    path = tmp_path / "part-0.parquet"
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), path)
    return str(path)


def test_install_makes_batch_readers_use_the_fixed_pool(parquet_file):
    install()
    with make_batch_reader(file_urls([parquet_file]), num_epochs=1) as reader:
        assert isinstance(reader._workers_pool, OrderedEndThreadPool)


def test_a_reader_leaves_stdout_alone_after_install(parquet_file, capfd):
    install()
    with make_batch_reader(file_urls([parquet_file]), num_epochs=1) as reader:
        list(reader)
    assert capfd.readouterr().out == ""


def test_columnar_results_give_strings_as_categorical_codes(parquet_file):
    with make_batch_reader(file_urls([parquet_file]), num_epochs=1, shuffle_row_groups=False) as reader:
        chunk = next(iter(columnar_results(reader)))
    assert isinstance(chunk["s"], pd.Categorical)
    assert chunk["s"].astype(object).tolist()[0::2] == ["JFK", "EWR"] and pd.isna(chunk["s"][1])


def test_columnar_results_give_numbers_as_numpy_with_nan_for_null(parquet_file):
    with make_batch_reader(file_urls([parquet_file]), num_epochs=1, shuffle_row_groups=False) as reader:
        chunk = next(iter(columnar_results(reader)))
    np.testing.assert_array_equal(chunk["i"], [1.0, np.nan, 3.0, 4.0])
    np.testing.assert_array_equal(chunk["f"], [0.5, 1.5, np.nan, 2.0])


def test_other_readers_keep_petastorms_own_output(parquet_file):
    with make_batch_reader(file_urls([parquet_file]), num_epochs=1) as first:
        columnar_results(first)
        with make_batch_reader(file_urls([parquet_file]), num_epochs=1) as second:
            chunk = next(iter(second))
    assert chunk.s.dtype.kind == "U"


def test_a_gs_url_becomes_its_bucket_and_key_without_gcsfs():
    from urllib.parse import urlparse

    import petastorm.fs_utils

    install()
    assert petastorm.fs_utils.get_dataset_path(urlparse("gs://bucket/lake/part-0.parquet")) == "bucket/lake/part-0.parquet"


def test_other_urls_keep_petastorms_own_dataset_path_after_install():
    from urllib.parse import urlparse

    import petastorm.fs_utils

    install()
    assert petastorm.fs_utils.get_dataset_path(urlparse("file:///tmp/a/part-0.parquet")) == "/tmp/a/part-0.parquet"
