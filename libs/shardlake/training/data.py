"""Petastorm input: one Delta snapshot's files, this rank's share, shuffled into tensor-ready batches."""
from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from shardlake.models.tabular import ModelSpec, encode
from shardlake.storage import StoreSettings, is_url, store_for

Batch = tuple[np.ndarray, np.ndarray, np.ndarray]  # numeric float32, categorical int64, label float32
POOLS = ("thread", "dummy", "process")


@dataclass(frozen=True)
class LoaderOptions:
    """How Petastorm reads: reader pool, its workers, and the shuffle window (rows)."""

    pool: str = "thread"
    workers: int = 1
    shuffle_buffer: int = 20000
    results_queue_size: int = 8  # row groups read ahead; each holds a whole row group in memory
    prefetch: int = 64  # batches prepared ahead by a background thread (0: prepare them inline)
    # Where an object store is, for s3:// files (the ranks run in other processes: it travels with the options).
    store: StoreSettings = StoreSettings()

    def __post_init__(self) -> None:
        if self.pool not in POOLS:
            raise ValueError(f"reader pool must be one of {POOLS}, got {self.pool!r}")


def file_urls(paths: Sequence[str]) -> list[str]:
    """file:// URLs for Petastorm (which wants one scheme for all files)."""
    return [p if "://" in p else f"file://{p}" for p in paths]


@lru_cache(maxsize=256)
def _row_groups(url: str, store: StoreSettings) -> int:
    import pyarrow.parquet as pq

    if is_url(url):
        with store_for(url, store).open_input(url) as handle:
            return pq.ParquetFile(handle).metadata.num_row_groups
    return pq.ParquetFile(url.removeprefix("file://")).metadata.num_row_groups


def row_group_count(urls: Sequence[str], store: StoreSettings = StoreSettings()) -> int:
    """Row groups in ``urls`` (footers only): Petastorm shards by row group, not by file."""
    return sum(_row_groups(u, store) for u in urls)


def petastorm_filesystem(urls: Sequence[str], store: StoreSettings):
    """The file system Petastorm reads s3://, gs:// or hdfs:// files with; None for local files (Petastorm's own).

    Petastorm 0.13.1 hands an s3:// URL's bare fsspec file system to pyarrow 14, whose dataset
    API then refuses Petastorm's ``validate_schema``; wrapped in pyarrow's legacy ``S3FSWrapper``
    the legacy reader Petastorm was written for is used, as for local files. For hdfs:// its own
    route is libhdfs (a JVM library not installed here), so hdfs-native's fsspec client is wrapped
    the same way, and pyarrow's GCS file system too.
    """
    if not urls:
        return None
    import warnings

    import pyarrow.filesystem as legacy

    with warnings.catch_warnings():  # the wrappers are deprecated with the legacy reader they serve
        warnings.simplefilter("ignore", FutureWarning)
        if urls[0].startswith(("s3://", "s3a://")):
            import s3fs

            endpoint = store.resolved_endpoint()
            client = {"region_name": store.resolved_region(), **({"endpoint_url": endpoint} if endpoint else {})}
            return legacy.S3FSWrapper(s3fs.S3FileSystem(client_kwargs=client))
        if urls[0].startswith("hdfs://"):
            return _fsspec_wrapper()(store_for(urls[0], store).fsspec)  # the namespace's one client
        if urls[0].startswith("gs://"):
            from fsspec.implementations.arrow import ArrowFSWrapper

            # pyarrow's own GCS file system (the bucket's store), seen through fsspec: no second GCS client.
            return _arrow_files_wrapper()(ArrowFSWrapper(store_for(urls[0], store).fs))
    return None


@lru_cache(maxsize=1)
def _arrow_files_wrapper():
    class ArrowFilesWrapper(_fsspec_wrapper()):
        """The wrapper over a pyarrow file system seen through fsspec, whose files open as pyarrow's own.

        fsspec's file object over pyarrow's GCS stream asks for the bytes after the last one when
        Parquet's reader reaches the end, a range GCS refuses (416); pyarrow's file reads only ranges
        inside the object, as the footer read of ``row_group_count`` does.
        """

        def open(self, path, mode="rb"):
            return self.fs.fs.open_input_file(path) if mode == "rb" else super().open(path, mode)

    return ArrowFilesWrapper


@lru_cache(maxsize=1)
def _fsspec_wrapper():
    import pyarrow.filesystem as legacy

    class FsspecWrapper(legacy.DaskFileSystem):
        """pyarrow's legacy wrapper of an fsspec file system, with the three calls it leaves to S3FSWrapper
        (pyarrow has no generic one): what the legacy ParquetDataset asks of Petastorm's file system."""

        def isdir(self, path):
            return self.fs.isdir(path)

        def isfile(self, path):
            return self.fs.isfile(path)

        def walk(self, path):
            yield from self.fs.walk(path)

    return FsspecWrapper


def shard_for(urls: Sequence[str], rank: int, size: int,
              store: StoreSettings = StoreSettings()) -> tuple[list[str], int, int]:
    """(files, cur_shard, shard_count) this rank reads.

    Petastorm needs at least one row group per shard; a table with fewer row groups than ranks
    is read by rank 0 alone (the others take part in every step with empty batches).
    """
    if size > 1 and row_group_count(urls, store) < size:
        return (list(urls) if rank == 0 else []), 0, 1
    return list(urls), rank, size


def _chunks(urls: Sequence[str], columns: Sequence[str], rank: int, size: int, seed: int,
            options: LoaderOptions, shuffle: bool) -> Iterator[dict]:
    """Row groups of this shard as dicts of columns, in a seeded order."""
    from petastorm import make_batch_reader

    from shardlake.training.petastorm_fix import columnar_results, install

    install()
    with make_batch_reader(
        [u.replace("s3a://", "s3://", 1) for u in file_urls(urls)],
        filesystem=petastorm_filesystem(urls, options.store),
        schema_fields=list(columns),
        cur_shard=rank if size > 1 else None,
        shard_count=size if size > 1 else None,
        num_epochs=1,  # petastorm's default (None) never ends
        shuffle_row_groups=shuffle,
        seed=seed + 1,  # petastorm treats seed 0 as "unseeded" (a random order)
        reader_pool_type=options.pool,
        workers_count=options.workers,
        results_queue_size=options.results_queue_size,
    ) as reader:
        yield from columnar_results(reader)


def _concat(parts: list[Batch]) -> Batch:
    if len(parts) == 1:
        return parts[0]
    return tuple(np.concatenate(arrays) for arrays in zip(*parts))  # type: ignore[return-value]


def _emit(data: Batch, rows: int, rng: np.random.Generator | None, batch_size: int,
          keep_rest: bool) -> tuple[list[Batch], Batch | None]:
    """Permute ``data`` once, cut it into batches (views); the incomplete tail is kept or emitted."""
    if rng is not None:
        order = rng.permutation(rows)
        data = tuple(np.take(a, order, axis=0) for a in data)  # type: ignore[assignment]  # take: ~3x faster than a[order]
    full = rows - rows % batch_size if keep_rest else rows
    out = [tuple(a[s:s + batch_size] for a in data) for s in range(0, full, batch_size)]
    rest = tuple(a[full:] for a in data) if keep_rest and full < rows else None
    return out, rest  # type: ignore[return-value]


def shuffled_batches(chunks: Iterable[Batch], batch_size: int, shuffle_buffer: int, rng: np.random.Generator | None,
                     ) -> Iterator[Batch]:
    """Regroup chunks into batches of ``batch_size``, every row exactly once.

    Rows are collected until at least ``shuffle_buffer`` rows (and one batch) are held, permuted,
    and emitted as full batches; the rest (under one batch) waits for the next chunk, and the
    last partial batch ends the stream. Without ``rng`` the order is kept.
    """
    held: list[Batch] = []
    rows = 0
    window = max(shuffle_buffer, batch_size) if rng is not None else batch_size
    for chunk in chunks:
        held.append(chunk)
        rows += len(chunk[2])
        if rows < window:
            continue
        out, rest = _emit(_concat(held), rows, rng, batch_size, keep_rest=True)
        yield from out
        held, rows = ([rest], len(rest[2])) if rest is not None else ([], 0)
    if rows:
        yield from _emit(_concat(held), rows, rng, batch_size, keep_rest=False)[0]


class _Prefetch:
    """Run an iterator in a daemon thread, ``depth`` items ahead: decoding and shuffling overlap the
    consumer's work (the training step), and its exceptions reach the consumer."""

    _END = object()

    def __init__(self, source: Iterator, depth: int):
        import queue
        import threading

        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._fill, args=(source,), daemon=True, name="batch-prefetch")
        self._thread.start()

    def _fill(self, source: Iterator) -> None:
        import queue

        item: object = self._END
        try:
            for item in source:
                while not self._stop.is_set():
                    try:
                        self._queue.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if self._stop.is_set():
                    return
            item = self._END
        except BaseException as err:  # noqa: BLE001  (handed to the consumer, raised there)
            item = err
        finally:
            close = getattr(source, "close", None)
            if close is not None:
                close()  # ends the Petastorm reader (its context manager) in this thread
        self._queue.put(item)

    def __iter__(self) -> Iterator:
        try:
            while True:
                item = self._queue.get()
                if item is self._END:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            self._stop.set()
            self._thread.join(timeout=30)


def batches(
    urls: Sequence[str],
    spec: ModelSpec,
    label: str,
    batch_size: int,
    rank: int = 0,
    size: int = 1,
    seed: int = 0,
    shuffle: bool = True,
    options: LoaderOptions = LoaderOptions(),
) -> Iterator[Batch]:
    """(numeric, categorical, label) numpy batches of this rank's share of ``urls``, each row once.

    Row groups are dealt to ranks by Petastorm (cur_shard/shard_count) and read in a seeded order;
    rows are shuffled within a window of ``options.shuffle_buffer`` rows. The same seed gives the
    same batches (the thread pool hands results back in ventilation order).
    """
    rng = np.random.default_rng([seed, rank]) if shuffle else None
    columns = [*spec.numeric, *spec.categorical, label]

    def encoded() -> Iterator[Batch]:
        for frame in _chunks(urls, columns, rank, size, seed, options, shuffle):
            numeric, categorical = encode(frame, spec)
            yield numeric, categorical, np.asarray(frame[label], dtype=np.float32)

    stream = shuffled_batches(encoded(), batch_size, options.shuffle_buffer, rng)
    yield from (_Prefetch(stream, options.prefetch) if options.prefetch > 0 else stream)
