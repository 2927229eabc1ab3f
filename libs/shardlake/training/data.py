"""Petastorm input: one Delta snapshot's files, this rank's share, shuffled into tensor-ready batches."""
from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import pandas as pd

from shardlake.models.tabular import ModelSpec, encode


def file_urls(paths: Sequence[str]) -> list[str]:
    """file:// URLs for Petastorm (which wants one scheme for all files)."""
    return [p if "://" in p else f"file://{p}" for p in paths]


def _chunks(urls: Sequence[str], columns: Sequence[str], rank: int, size: int, seed: int,
            workers: int) -> Iterator[pd.DataFrame]:
    from petastorm import make_batch_reader

    from shardlake.training.petastorm_fix import install

    install()
    with make_batch_reader(
        file_urls(urls),
        schema_fields=list(columns),
        cur_shard=rank if size > 1 else None,
        shard_count=size if size > 1 else None,
        num_epochs=1,  # petastorm's default (None) never ends
        shuffle_row_groups=True,
        seed=seed,
        reader_pool_type="thread",
        workers_count=workers,
    ) as reader:
        for chunk in reader:
            yield pd.DataFrame(chunk._asdict())


def batches(
    urls: Sequence[str],
    spec: ModelSpec,
    label: str,
    batch_size: int,
    rank: int = 0,
    size: int = 1,
    seed: int = 0,
    shuffle: bool = True,
    workers: int = 1,
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(numeric, categorical, label) numpy batches of this rank's share of ``urls``, each row once.

    Row groups are dealt to ranks by Petastorm (cur_shard/shard_count); rows are shuffled within
    each row group and across the remainder carried between them. One worker keeps the order, and
    so the run, reproducible for a seed.
    """
    rng = np.random.default_rng(seed)
    columns = [*spec.numeric, *spec.categorical, label]
    carry: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
    for frame in _chunks(urls, columns, rank, size, seed, workers):
        numeric, categorical = encode(frame, spec)
        target = frame[label].to_numpy(dtype=np.float32)
        if carry is not None:
            numeric, categorical, target = (np.concatenate([a, b]) for a, b in zip(carry, (numeric, categorical, target)))
        order = rng.permutation(len(target)) if shuffle else np.arange(len(target))
        full = len(order) - len(order) % batch_size
        for start in range(0, full, batch_size):
            idx = order[start:start + batch_size]
            yield numeric[idx], categorical[idx], target[idx]
        rest = order[full:]
        carry = (numeric[rest], categorical[rest], target[rest])
    if carry is not None and len(carry[2]):
        yield carry
