"""Elastic training under ``horovod.spark.run_elastic``: a lost rank costs the steps since the last commit.

Every rank keeps a ``hvd.elastic.TorchState`` (model, optimizer, epoch, the epoch's position and its
running sums, history). It is committed every ``commit_every_steps`` steps and at each epoch's end.
When a rank dies, the collectives of the others fail; Horovod rolls them back to the last commit,
forms a smaller ring (down to ``train.elastic.min_proc``) and calls the training function again;
a rank that comes back (Spark retries its task) joins at the next commit.

The guarantee after a reset: an epoch's rows are dealt once, at the epoch's start, into as many
parts as there were ranks then; the commit records how many batches of every part were trained,
and after a reset the ranks there are now share the parts out and take each up after its
committed batches. So every row of the training split is trained on exactly once per epoch in the
model that comes out (the steps after the last commit are undone along with what they trained on),
whatever the ranks do in between; the epoch's ``rows`` in the history say so.
"""
from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from shardlake.training.comm import HorovodComm
from shardlake.training.data import Batch
from shardlake.training.worker import (Run, TrainJob, effective_learning_rate, epoch_seed, finish_epoch,
                                       horovod_comm, inject_faults, kill_mid_epoch, lockstep, part_batches,
                                       rank_result, set_learning_rate, start_run, stops_early, train_step)


@dataclass
class Observed:
    """What one rank saw of the ring: resets it went through and the ring sizes it trained in."""

    resets: int = 0
    sizes: list[int] = field(default_factory=list)


def owned_parts(parts: int, rank: int, size: int) -> list[int]:
    """The parts of an epoch rank ``rank`` of ``size`` trains: round robin, so they stay spread when the ring shrinks."""
    return [p for p in range(parts) if p % size == rank]


def merge_positions(gathered: np.ndarray, parts: int) -> list[int]:
    """Every part's trained batches from each rank's report (-1 for a part it does not own)."""
    return [int(v) for v in gathered.reshape(-1, parts).max(axis=0)]


def _tagged(run: Run, epoch: int, parts: int, positions: list[int], owned: list[int]) -> Iterator[tuple[int, Batch]]:
    """This rank's parts one after another, each from its committed position, batches tagged with their part."""
    for part in owned:
        for batch in part_batches(run.job, run.spec, epoch, part, parts, skip=positions[part]):
            yield part, batch


class _Epoch:
    """One epoch's training on this rank between commits: its parts' positions and its uncommitted sums."""

    def __init__(self, run: Run, state, comm: HorovodComm, every: int):
        self.run, self.state, self.comm, self.every = run, state, comm, every
        self.positions = list(state.positions)
        self.owned = owned_parts(state.parts, comm.rank, comm.size)
        self.loss = torch.zeros((), dtype=torch.float64, device=run.device)
        self.rows = 0
        self.since = time.monotonic()

    def train(self) -> tuple[float, int, float]:
        """Train the rest of the epoch; (mean loss, rows, seconds) over all ranks and all its resets."""
        run, state, comm = self.run, self.state, self.comm
        run.train_model.train()
        # Dropout is seeded by the committed position: a stretch trained again after a rollback draws
        # the same way in every run that rolls back to that commit.
        torch.manual_seed(epoch_seed(run.job.seed, state.epoch, comm.rank) + 7919 * int(state.rows))
        stream = _tagged(run, state.epoch, state.parts, self.positions, self.owned)
        try:
            for step, item in enumerate(lockstep(stream, comm), start=1):
                loss, rows = train_step(run, None if item is None else item[1])
                kill_mid_epoch(run.job, comm, state.epoch, step)
                if item is not None:
                    self.positions[item[0]] += 1
                    self.loss += loss
                    self.rows += rows
                if step % self.every == 0:
                    self.commit()
        finally:
            stream.close()  # ends this rank's Petastorm readers when a collective fails mid-epoch
        self.fold()
        return state.loss / max(state.rows, 1), int(state.rows), float(state.seconds)

    def fold(self) -> None:
        """Add every rank's steps since the last commit to the state (collectives: all ranks at once)."""
        state, comm = self.state, self.comm
        mine = np.full(state.parts, -1, dtype=np.int64)
        mine[self.owned] = np.asarray(self.positions, dtype=np.int64)[self.owned]
        sums = comm.allreduce_sum(np.array([float(self.loss), self.rows], dtype=np.float64))
        now = time.monotonic()
        state.positions = merge_positions(comm.allgather(mine), state.parts)
        state.loss, state.rows = state.loss + float(sums[0]), state.rows + int(sums[1])
        state.seconds = state.seconds + (now - self.since)
        self.loss.zero_()
        self.rows, self.since = 0, now

    def commit(self) -> None:
        self.fold()
        self.state.commit()  # may raise HostsUpdatedInterrupt: a rank is ready to join


def _train_epochs(state, run: Run, comm: HorovodComm, every: int, seen: Observed, log) -> None:
    """The function ``hvd.elastic.run`` calls again after every reset, with the state of the last commit."""
    seen.sizes.append(comm.size)
    # A rank that joins took up the run folder's checkpoint on its own; the ring's state is rank 0's.
    run.history, run.best, run.resumed_from = state.history, state.best, state.resumed_from
    while state.epoch < run.job.epochs and not stops_early(run, state.epoch, comm, log):
        if state.parts == 0:  # the epoch's start: its rows are dealt to the ranks there are now
            state.parts, state.positions = comm.size, [0] * comm.size
            state.loss, state.rows, state.seconds = 0.0, 0, 0.0
        train_loss, rows, seconds = _Epoch(run, state, comm, every).train()
        epoch = state.epoch
        finish_epoch(run, comm, epoch, train_loss, rows, seconds, log)
        state.history, state.best = run.history, run.best
        state.epoch, state.parts = epoch + 1, 0
        state.commit()
        inject_faults(run.job, comm, epoch, run.resumed_from is not None)


def elastic_entry(job: TrainJob, commit_every_steps: int, log=print) -> dict:
    """Entry point ``horovod.spark.run_elastic`` runs on every rank, first started or joining later."""
    import horovod.torch as hvd

    comm = horovod_comm(job)
    run = start_run(job, comm, log)
    state = hvd.elastic.TorchState(model=run.model, optimizer=run.optimizer, epoch=run.start_epoch, parts=0,
                                   positions=[], loss=0.0, rows=0, seconds=0.0, history=run.history, best=run.best,
                                   resumed_from=run.resumed_from)
    seen = Observed()

    def on_reset() -> None:
        comm.rank, comm.size, comm.local_rank = hvd.rank(), hvd.size(), hvd.local_rank()
        seen.resets += 1
        set_learning_rate(run.optimizer, effective_learning_rate(job.learning_rate, job.lr_scaling, comm.size))

    state.register_reset_callbacks([on_reset])
    hvd.elastic.run(_train_epochs)(state, run, comm, commit_every_steps, seen, log)
    return {**rank_result(job, comm, run.result()), "elastic": asdict(seen)}


def merge_observed(results: list[dict]) -> dict:
    """The ring's history over every final rank's report: the most resets any saw, every size any trained in."""
    seen = [r["elastic"] for r in results if r.get("elastic")]
    return {"resets": max((s["resets"] for s in seen), default=0),
            "sizes": sorted({n for s in seen for n in s["sizes"]})}
