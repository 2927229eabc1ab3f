"""The training function every rank runs: synchronous data-parallel SGD with checkpoints.

It receives plain values only (file lists, model spec, hyper-parameters, run folder) and talks to
the other ranks through a ``Comm``, so the same function runs single-process, under
``horovod.spark.run`` (``HorovodComm``) and under Spark's TorchDistributor
(``shardlake.training.distributor.TorchComm``).
"""
from __future__ import annotations

import hashlib
import json
import os
import signal
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from itertools import islice

import numpy as np
import torch

from shardlake.folders import Folder
from shardlake.models.tabular import WEIGHTS_FILE, ModelSpec, build_model, default_device, load_model, save_model
from shardlake.ops.progress import TrainingTicker
from shardlake.training.checkpoint import load_checkpoint, save_checkpoint
from shardlake.training.comm import Comm, HorovodComm
from shardlake.training.data import Batch, LoaderOptions, batches, shard_for
from shardlake.storage import StoreSettings
from shardlake.training.metrics import metrics_for, primary_metric

HISTORY = "history.json"
BEST_DIR = "best"
LOCKSTEP_BLOCK = 32  # batches agreed on per collective (see lockstep)
EVAL_BATCH = 8192


@dataclass(frozen=True)
class TrainJob:
    """Plain inputs of one training run (picklable, no Spark objects)."""

    train_files: list[str]
    validation_files: list[str]
    test_files: list[str]
    spec: dict
    label: str
    run_dir: str
    epochs: int
    batch_size: int
    learning_rate: float
    seed: int
    early_stopping_patience: int
    loader_workers: int = 1
    loader_pool: str = "thread"
    shuffle_buffer: int = 20000
    torch_threads: int | None = None  # None: the machine's cores shared out over its ranks
    lr_scaling: str = "none"  # "linear": learning rate times the rank count (effective_learning_rate)
    # The code that trains (package version + git commit): other code may train differently, so it
    # is part of the fingerprint and a checkpoint is resumed only by the code that wrote it.
    code_version: str = "unknown"
    # Fault injection for recovery tests; neither fires in a resumed run.
    fail_after_epoch: int | None = None  # every rank raises after this epoch's checkpoint
    kill_after_epoch: int | None = None  # rank ``kill_rank`` SIGKILLs itself after this epoch's checkpoint
    # Rank ``kill_rank`` SIGKILLs itself after this epoch's step ``kill_at_step``, once per run folder
    # (a restarted stage goes on): a rank lost mid-epoch, as a preempted node loses it.
    kill_during_epoch: int | None = None
    kill_at_step: int = 1
    kill_rank: int = 1
    # Where an object store is, for a run folder and files on one: ranks run in other processes,
    # which were never told (credentials stay in their environment).
    store: StoreSettings = StoreSettings()

    @property
    def loader(self) -> LoaderOptions:
        return LoaderOptions(pool=self.loader_pool, workers=self.loader_workers, shuffle_buffer=self.shuffle_buffer,
                             store=self.store)

    @property
    def folder(self) -> Folder:
        """The run folder, on whatever store holds it."""
        return Folder(self.run_dir, self.store)

    def fingerprint(self) -> str:
        """What a checkpoint must match to be resumed: what is trained on, how and by which code, not the
        run folder, fault injection or speed knobs (reader pool and threads, torch threads)."""
        ignored = ("run_dir", "store", "fail_after_epoch", "kill_after_epoch", "kill_during_epoch", "kill_at_step", "kill_rank",
                   "loader_workers", "loader_pool", "torch_threads")
        fields = {k: v for k, v in asdict(self).items() if k not in ignored}
        return hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()[:16]


@dataclass
class EpochLog:
    epoch: int
    train_loss: float
    validation: dict[str, float]
    samples_per_second: float
    seconds: float
    rows: int = 0
    samples_per_second_per_worker: float = 0.0
    ranks: int = 1  # ranks that trained the epoch (its end's, under elastic training)


@dataclass
class TrainResult:
    history: list[EpochLog] = field(default_factory=list)
    test: dict[str, float] = field(default_factory=dict)
    best_epoch: int = -1
    resumed_from: int | None = None


def _loss_fn(kind: str):
    return torch.nn.BCEWithLogitsLoss(reduction="none") if kind == "binary" else torch.nn.MSELoss(reduction="none")


def epoch_seed(seed: int, epoch: int, rank: int = 0) -> int:
    """Seed of one epoch on one rank: a resumed run replays exactly what an uninterrupted one does."""
    return (seed * 1_000_003 + epoch * 1_009 + rank) % (2**31 - 1)


def should_stop(best_epoch: int, epoch: int, patience: int) -> bool:
    """Early stopping: ``patience`` epochs have passed without the validation metric improving."""
    return best_epoch >= 0 and epoch - best_epoch > patience


def improved(value: float, best: float | None, higher_is_better: bool) -> bool:
    if best is None:
        return True
    return value > best if higher_is_better else value < best


def lockstep(stream, comm: Comm, block: int = LOCKSTEP_BLOCK):
    """This rank's batches, padded with ``None`` so every rank makes the same number of steps.

    Each optimizer step is a collective, so a rank that ran dry must keep stepping (with an
    empty batch) until the last rank is done. Ranks agree on the step count one block of
    batches at a time: one small collective per ``block`` steps instead of one per step.
    """
    while True:
        held = list(islice(stream, block))
        steps = int(comm.allgather(np.array([len(held)], dtype=np.int64)).max())
        if steps == 0:
            return
        yield from held
        yield from (None for _ in range(steps - len(held)))


def _to(device, *arrays):
    return [torch.from_numpy(a).to(device, non_blocking=True) for a in arrays]


def _evaluate(model, urls, spec: ModelSpec, label: str, job: TrainJob, comm: Comm, device) -> dict[str, float]:
    """Metrics over all of ``urls``: every rank scores its share, outputs are gathered (exact, not averaged)."""
    files, rank, size = shard_for(urls, comm.rank, comm.size, job.loader.store)
    outputs, labels = [np.zeros(0, np.float32)], [np.zeros(0, np.float32)]
    model.eval()
    with torch.no_grad():
        if files:
            for numeric, categorical, target in batches(files, spec, label, EVAL_BATCH, rank, size, shuffle=False,
                                                        options=job.loader):
                out = model.predict(*_to(device, numeric, categorical))
                outputs.append(out.float().cpu().numpy())
                labels.append(target)
    all_out = comm.allgather(np.concatenate(outputs))
    all_labels = comm.allgather(np.concatenate(labels))
    return metrics_for(spec.kind, all_labels, all_out)


def effective_learning_rate(learning_rate: float, scaling: str, ranks: int) -> float:
    """The optimizer's learning rate for ``ranks`` ranks: as configured, or times the rank count (``linear``).

    Linear scaling follows the larger global batch of plain SGD; Adam normalises its steps by the
    gradients' own scale, so it is not scaled unless the configuration asks for it.
    """
    if scaling not in ("none", "linear"):
        raise ValueError(f"lr_scaling must be 'none' or 'linear', got {scaling!r}")
    return learning_rate * ranks if scaling == "linear" else learning_rate


def part_batches(job: TrainJob, spec: ModelSpec, epoch: int, part: int, parts: int, skip: int = 0) -> Iterator[Batch]:
    """Batches of part ``part`` of ``parts`` of the training split in ``epoch``, from batch ``skip`` on.

    One part's stream depends only on (files, part, parts, seed, epoch), so a stream taken up again
    after ``skip`` batches goes on with exactly the rows the first reading had not yet given.
    """
    files, rank, size = shard_for(job.train_files, part, parts, job.loader.store)
    if not files:
        return iter(())
    stream = batches(files, spec, job.label, job.batch_size, rank, size, seed=epoch_seed(job.seed, epoch),
                     options=job.loader)
    return islice(stream, skip, None)


def train_step(run: Run, batch: Batch | None) -> tuple[torch.Tensor, int]:
    """One synchronous optimizer step on ``batch`` (None: a rank that ran dry takes part with a zero-weight
    row); returns the batch's summed loss (on the device) and its rows."""
    spec, device = run.spec, run.device
    if batch is None:
        numeric = torch.zeros((1, len(spec.numeric)), dtype=torch.float32, device=device)
        categorical = torch.zeros((1, len(spec.categorical)), dtype=torch.int64, device=device)
        target, weight = torch.zeros(1, device=device), 0.0
    else:
        numeric, categorical, target = _to(device, *batch)
        weight = 1.0
    run.optimizer.zero_grad()  # Horovod's wrapper takes no set_to_none (None is torch's default)
    out = run.train_model(numeric, categorical)
    loss = run.loss_fn(out, run.loss_target(target)).mean() * weight
    loss.backward()
    run.optimizer.step()
    if batch is None:
        return torch.zeros((), dtype=torch.float64, device=device), 0
    return loss.detach().double() * len(batch[2]), len(batch[2])


def _train_epoch(run: Run, comm: Comm, epoch: int) -> tuple[float, int]:
    """One pass over this rank's share; returns the mean loss and the rows over all ranks."""
    run.train_model.train()
    stream = part_batches(run.job, run.spec, epoch, comm.rank, comm.size)
    # Summed on the device: reading the loss every step would synchronise a GPU every step.
    total_loss, total_rows = torch.zeros((), dtype=torch.float64, device=run.device), 0
    run.ticker.start_epoch()
    for step, batch in enumerate(lockstep(stream, comm), start=1):
        loss, rows = train_step(run, batch)
        kill_mid_epoch(run.job, comm, epoch, step)
        total_loss += loss
        total_rows += rows
        run.ticker.tick(epoch, step, total_rows)
    sums = comm.allreduce_sum(np.array([float(total_loss), total_rows], dtype=np.float64))
    return float(sums[0] / max(sums[1], 1)), int(sums[1])


def kill_mid_epoch(job: TrainJob, comm: Comm, epoch: int, step: int) -> None:
    """The mid-epoch fault of a recovery test: the first time only (a marker in the run folder), so the
    restarted stage trains on."""
    if job.kill_during_epoch != epoch or step != job.kill_at_step or comm.rank != job.kill_rank:
        return
    if job.folder.create_new(f".killed-in-epoch-{epoch}"):
        os.kill(os.getpid(), signal.SIGKILL)


def inject_faults(job: TrainJob, comm: Comm, epoch: int, resumed: bool) -> None:
    if resumed or epoch not in (job.fail_after_epoch, job.kill_after_epoch):
        return
    comm.barrier()  # rank 0 has written this epoch's checkpoint before anything dies
    if job.kill_after_epoch == epoch and comm.rank == job.kill_rank:
        os.kill(os.getpid(), signal.SIGKILL)  # a real crash: no exception handling, no cleanup
    if job.fail_after_epoch == epoch:
        raise RuntimeError(f"injected failure after epoch {epoch} (fault-injection test)")


def _write_history(run_dir: Folder, history: list[dict]) -> None:
    run_dir.write_text(HISTORY, json.dumps(history, indent=1))


@dataclass
class Run:
    """One rank's training in progress: the model, its optimizer, and what the epochs so far left behind."""

    job: TrainJob
    spec: ModelSpec
    device: torch.device
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    train_model: torch.nn.Module  # the module stepped through (DDP's wrapper, or the model itself)
    loss_fn: torch.nn.Module
    fingerprint: str
    history: list[dict] = field(default_factory=list)
    best: dict = field(default_factory=lambda: {"epoch": -1, "value": None})
    start_epoch: int = 0
    resumed_from: int | None = None
    # Rank 0's live position, for the driver's progress bar (other ranks' ticker writes nothing).
    ticker: TrainingTicker = field(default_factory=lambda: TrainingTicker(None, 0, 1))

    def loss_target(self, target: torch.Tensor) -> torch.Tensor:
        return self.model.loss_target(target)

    def result(self) -> TrainResult:
        return TrainResult(history=[EpochLog(**h) for h in self.history], best_epoch=int(self.best["epoch"]),
                           resumed_from=self.resumed_from)


def start_run(job: TrainJob, comm: Comm, log=print) -> Run:
    """Build the model and optimizer on this rank's device and take up the run folder's last checkpoint."""
    spec = ModelSpec.from_dict(job.spec)
    device = default_device(comm.local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    model = build_model(spec, seed=job.seed).to(device)
    learning_rate = effective_learning_rate(job.learning_rate, job.lr_scaling, comm.size)
    optimizer = torch.optim.Adam(model.parameters(), lr=learning_rate)
    train_model, optimizer = comm.distribute(model, optimizer)
    run = Run(job, spec, device, model, optimizer, train_model, _loss_fn(spec.kind), job.fingerprint(),
              ticker=TrainingTicker(job.folder if comm.rank == 0 else None, job.epochs, comm.size))
    checkpoint = load_checkpoint(job.folder, run.fingerprint, job.code_version)
    if checkpoint is not None:
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        set_learning_rate(optimizer, learning_rate)  # the checkpoint's rate is its run's rank count's
        torch.set_rng_state(checkpoint["torch_rng"])
        run.history = json.loads(checkpoint["history"])
        run.best = json.loads(checkpoint["best"])
        run.start_epoch = run.resumed_from = int(checkpoint["epoch"]) + 1
        if comm.rank == 0:
            log(f"resuming from the checkpoint after epoch {run.start_epoch}/{job.epochs}")
    return run


def set_learning_rate(optimizer: torch.optim.Optimizer, learning_rate: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = learning_rate


def stops_early(run: Run, epoch: int, comm: Comm, log=print) -> bool:
    """Whether ``epoch`` is not to be trained: the validation metric has not improved for patience epochs."""
    if not should_stop(run.best["epoch"], epoch, run.job.early_stopping_patience):
        return False
    if comm.rank == 0:
        metric, _ = primary_metric(run.spec.kind)
        log(f"early stopping: no {metric} improvement since epoch {run.best['epoch'] + 1}")
    return True


def finish_epoch(run: Run, comm: Comm, epoch: int, train_loss: float, rows: int, seconds: float, log=print) -> None:
    """Validate the epoch's model, add it to the history; rank 0 keeps the best model, the checkpoint and
    the history in the run folder and logs loss, validation metric and throughput."""
    job = run.job
    validation = _evaluate(run.model, job.validation_files, run.spec, job.label, job, comm, run.device)
    metric, higher_is_better = primary_metric(run.spec.kind)
    value = validation.get(metric, float("nan"))
    better = improved(value, run.best["value"], higher_is_better)
    rate = rows / seconds if seconds else 0.0
    entry = {"epoch": epoch, "train_loss": train_loss, "validation": validation, "samples_per_second": rate,
             "samples_per_second_per_worker": rate / comm.size, "seconds": seconds, "rows": rows,
             "ranks": comm.size}
    run.history = [*run.history, entry]  # a new list: an elastic state's committed copy must not change
    if better:
        run.best = {"epoch": epoch, "value": value}
    if comm.rank == 0:
        run_dir = job.folder
        if better:
            save_model(run.model, run_dir.folder(BEST_DIR))
        save_checkpoint(run_dir, run.model, run.optimizer, epoch, run.history, run.best, run.fingerprint,
                        job.code_version)
        _write_history(run_dir, run.history)
        log(f"epoch {epoch + 1}/{job.epochs}: loss {train_loss:.4f}  validation {metric} {value:.4f}  "
            f"{rate:,.0f} samples/s ({rate / comm.size:,.0f} per worker; {rows} rows, {seconds:.1f}s)")


def run_training(job: TrainJob, comm: Comm, log=print) -> TrainResult:
    """Train for ``job.epochs`` (resuming from the run folder's checkpoint), keep the best model.

    Rank 0 writes the best model, a checkpoint and the history after every epoch and logs loss,
    validation metric and throughput.
    """
    run = start_run(job, comm, log)
    comm.broadcast_state(run.model, run.optimizer)
    for epoch in range(run.start_epoch, job.epochs):
        if stops_early(run, epoch, comm, log):
            break
        torch.manual_seed(epoch_seed(job.seed, epoch, comm.rank))  # dropout differs by rank, replays on resume
        started = time.monotonic()
        train_loss, rows = _train_epoch(run, comm, epoch)
        finish_epoch(run, comm, epoch, train_loss, rows, time.monotonic() - started, log)
        inject_faults(job, comm, epoch, run.resumed_from is not None)
    return run.result()


def test_metrics(job: TrainJob, comm: Comm) -> dict[str, float]:
    """Test-split metrics of the best model (every rank scores its share; outputs are gathered)."""
    best_dir = job.folder.folder(BEST_DIR)
    comm.barrier()  # rank 0 wrote the best model
    if not best_dir.exists(WEIGHTS_FILE) or not job.test_files:
        return {}
    device = default_device(comm.local_rank)
    model = load_model(best_dir, device)
    return _evaluate(model, job.test_files, model.spec, job.label, job, comm, device)


test_metrics.__test__ = False  # not a pytest test, despite the name


def train_and_test(job: TrainJob, comm: Comm, log=print) -> dict:
    """Train, then score the test split: the result every entry point returns (rank 0's is authoritative)."""
    return rank_result(job, comm, run_training(job, comm, log))


def rank_result(job: TrainJob, comm: Comm, result: TrainResult) -> dict:
    """What a rank returns to the driver: its training's history and the best model's test metrics."""
    return {"rank": comm.rank, "size": comm.size, "history": [asdict(h) for h in result.history],
            "best_epoch": result.best_epoch, "resumed_from": result.resumed_from, "test": test_metrics(job, comm)}


def threads_per_rank(local_size: int, wanted: int | None = None) -> int:
    """Torch intra-op threads per rank: as configured, else the cores shared out so ranks do not
    oversubscribe them (on a busy machine, spinning intra-op threads can slow a small model 10x)."""
    return wanted or max(1, (os.cpu_count() or 2) // max(local_size, 1))


def horovod_entry(job: TrainJob) -> dict:
    """Entry point run by ``horovod.spark.run`` on every rank."""
    return train_and_test(job, horovod_comm(job))


def horovod_comm(job: TrainJob) -> HorovodComm:
    """Join Horovod's ring (hvd.init) with the torch threads this rank's share of the cores allows."""
    import horovod.torch as hvd

    hvd.init()
    torch.set_num_threads(threads_per_rank(hvd.local_size(), job.torch_threads))
    return HorovodComm(rank=hvd.rank(), size=hvd.size(), local_rank=hvd.local_rank(), hvd=hvd)
