"""Three changes to Petastorm 0.13.1's batch reader: a race fix, a columnar fast path, and gs:// paths.

1. ``ThreadPool.get_results`` first asks whether every worker is done, then whether the
   ventilator has finished. If the caller is preempted between the two checks while the
   ventilator hands out all row groups, both answers are "yes" although no row group was read,
   and the reader ends the epoch empty (seen under load with few row groups per shard;
   ../shared/STACK.md notes it too). Reading the ventilator's state *before* the workers' closes
   that window: once ventilation has finished, "all workers done" really means every row group
   was read.

2. The stock results reader turns every string column into a NumPy unicode array
   (``astype(np.unicode_)``, a Python string per row): about 60% of the reader's time on the
   flights table. ``columnar_results`` swaps, for one reader only, a results reader that hands
   over string columns as ``pandas.Categorical`` (Arrow's dictionary encoding: integer codes and
   a small dictionary) and numeric columns as NumPy arrays.

3. Petastorm turns each URL into its file system's path with fsspec's ``strip_protocol``, which
   imports the scheme's fsspec package even when the caller hands the file system over: for
   ``gs://`` that is gcsfs, a second GCS client this platform does not use (it reads through
   pyarrow's). ``gs://bucket/key`` becomes ``bucket/key`` here, as gcsfs itself would spell it.
"""
from __future__ import annotations

import logging
import warnings

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import petastorm.fs_utils
import petastorm.reader
from petastorm.workers_pool import EmptyResultError
from petastorm.workers_pool.thread_pool import ThreadPool

log = logging.getLogger(__name__)


class OrderedEndThreadPool(ThreadPool):
    """Petastorm's ThreadPool with the end-of-data check made race-free."""

    def all_workers_done(self) -> bool:
        ventilation_finished = self._ventilator is None or self._ventilator.completed()
        return ventilation_finished and super().all_workers_done()


def install() -> None:
    """Make make_batch_reader/make_reader build the fixed pool (idempotent).

    Also silences the deprecation warnings Petastorm's use of pyarrow's legacy API raises on every
    read (known and pinned: ../shared/STACK.md), and the ``print("Cache cleanup complete.")`` of
    every reader's exit (once per epoch per rank), which otherwise bury each rank's log.
    """
    petastorm.reader.ThreadPool = OrderedEndThreadPool
    if petastorm.fs_utils.get_dataset_path is not _dataset_path:
        _dataset_path.stock = petastorm.fs_utils.get_dataset_path
        petastorm.fs_utils.get_dataset_path = _dataset_path
    petastorm.reader.Reader.cleanup_cache = _quiet_cleanup_cache
    for category in (FutureWarning, DeprecationWarning):
        warnings.filterwarnings("ignore", category=category, module=r"petastorm(\..*)?$")


def _dataset_path(parsed_url) -> str:
    """Petastorm's get_dataset_path, with ``gs://bucket/key`` -> ``bucket/key`` without gcsfs."""
    if parsed_url.scheme.lower() == "gs":
        return f"{parsed_url.netloc}{parsed_url.path}"
    return _dataset_path.stock(parsed_url)


def _quiet_cleanup_cache(self) -> None:
    """Petastorm's Reader.cleanup_cache without its unconditional print; errors are logged."""
    if isinstance(self.cache, petastorm.reader.LocalDiskCache):
        try:
            self.cache.cleanup()
        except (OSError, AttributeError) as err:
            log.warning("petastorm cache cleanup failed: %s", err)


def column_values(column: pa.ChunkedArray) -> np.ndarray | pd.Categorical:
    """One Arrow column as NumPy (nulls -> NaN) or, for strings, as a Categorical (nulls -> code -1)."""
    array = column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
    if pa.types.is_string(array.type) or pa.types.is_large_string(array.type):
        encoded = array.dictionary_encode()
        codes = pc.fill_null(encoded.indices, -1).to_numpy(zero_copy_only=False)
        return pd.Categorical.from_codes(codes, categories=pd.Index(encoded.dictionary.to_pylist(), dtype="object"),
                                         validate=False)
    if pa.types.is_dictionary(array.type):
        return column_values(pa.chunked_array([array.cast(array.type.value_type)]))
    return array.to_numpy(zero_copy_only=False)


class ColumnarResultsReader:
    """Results reader for ``ArrowReaderWorker`` output: a dict of columns per row group."""

    batched_output = True

    def read_next(self, workers_pool, schema, ngram) -> dict:
        try:
            table = workers_pool.get_results()
        except EmptyResultError:
            raise StopIteration from None
        if isinstance(table, dict):  # convert_early_to_numpy=True: already NumPy
            return table
        return {name: column_values(table.column(name)) for name in table.column_names}


def columnar_results(reader: petastorm.reader.Reader) -> petastorm.reader.Reader:
    """Make ``reader`` (from make_batch_reader) yield dicts of columns instead of namedtuples of NumPy.

    Touches this reader object only: other Petastorm readers in the process are unchanged.
    """
    if not reader.is_batched_reader:
        raise ValueError("columnar_results needs a reader from make_batch_reader")
    reader._results_queue_reader = ColumnarResultsReader()
    return reader
