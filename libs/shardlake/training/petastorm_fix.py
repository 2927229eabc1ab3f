"""A fix for a race in Petastorm 0.13.1's thread pool that can end an epoch with zero rows.

``ThreadPool.get_results`` first asks whether every worker is done, then whether the ventilator
has finished. If the caller is preempted between the two checks while the ventilator hands out
all row groups, both answers are "yes" although no row group was read, and the reader ends the
epoch empty (seen under load with few row groups per shard; ../shared/STACK.md notes it too).
Reading the ventilator's state *before* the workers' closes that window: once ventilation has
finished, "all workers done" really means every row group was read.
"""
from __future__ import annotations

import petastorm.reader
from petastorm.workers_pool.thread_pool import ThreadPool


class OrderedEndThreadPool(ThreadPool):
    """Petastorm's ThreadPool with the end-of-data check made race-free."""

    def all_workers_done(self) -> bool:
        ventilation_finished = self._ventilator is None or self._ventilator.completed()
        return ventilation_finished and super().all_workers_done()


def install() -> None:
    """Make make_batch_reader/make_reader build the fixed pool (idempotent)."""
    petastorm.reader.ThreadPool = OrderedEndThreadPool
