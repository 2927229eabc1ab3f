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
import pickle
import signal
import time
from dataclasses import asdict, dataclass, field
from itertools import islice
from pathlib import Path

import numpy as np
import torch

from shardlake.models.tabular import WEIGHTS_FILE, ModelSpec, build_model, default_device, load_model, save_model
from shardlake.training.data import LoaderOptions, batches, shard_for
from shardlake.training.metrics import metrics_for, primary_metric

CHECKPOINT = "checkpoint.pt"
PREVIOUS_CHECKPOINT = "checkpoint.previous.pt"
HISTORY = "history.json"
BEST_DIR = "best"
LOCKSTEP_BLOCK = 32  # batches agreed on per collective (see _lockstep)
EVAL_BATCH = 8192


class CheckpointError(RuntimeError):
    """A checkpoint that may not be resumed: another job's, or one holding more than tensors and plain values."""


class UnreadableCheckpointError(CheckpointError):
    """A checkpoint file that does not load at all (torn, truncated): an older one may stand in for it."""


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
    # Rank ``kill_rank`` SIGKILLs itself after this epoch's first step, once per run folder (a
    # restarted stage goes on): a rank lost mid-epoch, as a preempted node loses it.
    kill_during_epoch: int | None = None
    kill_rank: int = 1

    @property
    def loader(self) -> LoaderOptions:
        return LoaderOptions(pool=self.loader_pool, workers=self.loader_workers, shuffle_buffer=self.shuffle_buffer)

    def fingerprint(self) -> str:
        """What a checkpoint must match to be resumed: what is trained on, how and by which code, not the
        run folder, fault injection or speed knobs (reader pool and threads, torch threads)."""
        ignored = ("run_dir", "fail_after_epoch", "kill_after_epoch", "kill_during_epoch", "kill_rank",
                   "loader_workers", "loader_pool", "torch_threads")
        fields = {k: v for k, v in asdict(self).items() if k not in ignored}
        return hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()[:16]


@dataclass
class Comm:
    """The collectives training needs; this base is the single-process case (identity)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    def allreduce_sum(self, value: np.ndarray) -> np.ndarray:
        return value

    def allgather(self, value: np.ndarray) -> np.ndarray:
        """Concatenate every rank's array along axis 0 (lengths may differ), in rank order."""
        return value

    def distribute(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer):
        """(module to train through, optimizer) that average gradients over ranks."""
        return model, optimizer

    def broadcast_state(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
        """Make every rank start from rank 0's parameters and optimizer state."""

    def barrier(self) -> None:
        pass


@dataclass
class HorovodComm(Comm):
    """Horovod's collectives (Gloo on CPU, NCCL when built for GPUs)."""

    hvd: object | None = None

    def allreduce_sum(self, value: np.ndarray) -> np.ndarray:
        return self.hvd.allreduce(torch.as_tensor(value), op=self.hvd.Sum).numpy()

    def allgather(self, value: np.ndarray) -> np.ndarray:
        return self.hvd.allgather(torch.as_tensor(value)).numpy()

    def distribute(self, model, optimizer):
        return model, self.hvd.DistributedOptimizer(optimizer, named_parameters=model.named_parameters())

    def broadcast_state(self, model, optimizer) -> None:
        self.hvd.broadcast_parameters(model.state_dict(), root_rank=0)
        self.hvd.broadcast_optimizer_state(optimizer, root_rank=0)

    def barrier(self) -> None:
        self.hvd.barrier()


@dataclass
class EpochLog:
    epoch: int
    train_loss: float
    validation: dict[str, float]
    samples_per_second: float
    seconds: float
    rows: int = 0
    samples_per_second_per_worker: float = 0.0


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


def _lockstep(stream, comm: Comm, block: int = LOCKSTEP_BLOCK):
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
    files, rank, size = shard_for(urls, comm.rank, comm.size)
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


def save_checkpoint(run_dir: Path, model, optimizer, epoch: int, history: list[dict], best: dict,
                    job_fingerprint: str, code_version: str = "unknown") -> None:
    """Tensors and plain values only (loadable with weights_only=True), written atomically."""
    state = {
        "epoch": epoch,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "torch_rng": torch.get_rng_state(),
        "history": json.dumps(history),
        "best": json.dumps(best),
        "job": job_fingerprint,
        "code_version": code_version,  # in the fingerprint too; kept readable for the refusal message
    }
    tmp = run_dir / (CHECKPOINT + ".tmp")
    torch.save(state, tmp)
    current = run_dir / CHECKPOINT
    if current.exists():
        os.replace(current, run_dir / PREVIOUS_CHECKPOINT)  # the last two are kept
    os.replace(tmp, current)  # atomic: a rank killed mid-write leaves only a .tmp, which is never loaded


def _read_checkpoint(path: Path) -> dict:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:  # weights_only refuses any object but tensors and plain values
        raise CheckpointError(f"{path}: refused to load: it holds more than tensors and plain values "
                              f"({' '.join(str(err).split())[:300]})") from err
    except (RuntimeError, EOFError, OSError) as err:
        raise UnreadableCheckpointError(f"{path}: unreadable checkpoint ({err}); remove it to start the run "
                                        "afresh") from err


def _newest_readable(run_dir: Path) -> tuple[Path, dict] | None:
    """The newest checkpoint that loads: the last one, else the one before it (the last was lost or torn by
    a failure between the two renames or on the storage); a refusal of its content is not passed over."""
    paths = [p for p in (run_dir / CHECKPOINT, run_dir / PREVIOUS_CHECKPOINT) if p.exists()]
    for index, path in enumerate(paths):
        try:
            return path, _read_checkpoint(path)
        except UnreadableCheckpointError:
            if index == len(paths) - 1:
                raise
    return None


def load_checkpoint(run_dir: Path, job_fingerprint: str | None = None, code_version: str | None = None) -> dict | None:
    """The run folder's newest loadable checkpoint, or None. Never unpickles objects (weights_only=True).

    With ``job_fingerprint`` (and ``code_version``), a checkpoint of another job (or written by other
    code) is refused: resuming it would mix two trainings in one model.
    """
    found = _newest_readable(run_dir)
    if found is None:
        return None
    path, state = found
    written_by = state.get("code_version")
    if code_version is not None and written_by is not None and written_by != code_version:
        raise CheckpointError(f"{path} belongs to another job: written by code version {written_by}, this run's is "
                              f"{code_version}; start a new run id or remove the run folder")
    if job_fingerprint is not None and state.get("job") != job_fingerprint:
        raise CheckpointError(f"{path} belongs to another job (config, table version, files or code version "
                              f"changed); start a new run id or remove the run folder")
    return state


def _train_epoch(train_model, optimizer, loss_fn, job: TrainJob, spec: ModelSpec, comm: Comm, epoch: int, device):
    """One pass over this rank's share; returns the mean loss and the rows over all ranks."""
    train_model.train()
    files, rank, size = shard_for(job.train_files, comm.rank, comm.size)
    stream = iter(batches(files, spec, job.label, job.batch_size, rank, size, seed=epoch_seed(job.seed, epoch),
                          options=job.loader)) if files else iter(())
    target_of = train_model.module.loss_target if hasattr(train_model, "module") else train_model.loss_target
    # Summed on the device: reading the loss every step would synchronise a GPU every step.
    total_loss, total_rows = torch.zeros((), dtype=torch.float64, device=device), 0
    for batch in _lockstep(stream, comm):
        if batch is None:  # this rank ran dry: take part in the step with a zero-weight row
            numeric = torch.zeros((1, len(spec.numeric)), dtype=torch.float32, device=device)
            categorical = torch.zeros((1, len(spec.categorical)), dtype=torch.int64, device=device)
            target, weight = torch.zeros(1, device=device), 0.0
        else:
            numeric, categorical, target = _to(device, *batch)
            weight = 1.0
        optimizer.zero_grad()  # Horovod's wrapper takes no set_to_none (None is torch's default)
        out = train_model(numeric, categorical)
        loss = loss_fn(out, target_of(target)).mean() * weight
        loss.backward()
        optimizer.step()
        _kill_mid_epoch(job, comm, epoch)
        if batch is not None:
            total_loss += loss.detach().double() * len(batch[2])
            total_rows += len(batch[2])
    sums = comm.allreduce_sum(np.array([float(total_loss), total_rows], dtype=np.float64))
    return float(sums[0] / max(sums[1], 1)), int(sums[1])


def _kill_mid_epoch(job: TrainJob, comm: Comm, epoch: int) -> None:
    """The mid-epoch fault of a recovery test: the first time only (a marker in the run folder), so the
    restarted stage trains on."""
    if job.kill_during_epoch != epoch or comm.rank != job.kill_rank:
        return
    try:
        os.close(os.open(Path(job.run_dir, f".killed-in-epoch-{epoch}"), os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return
    os.kill(os.getpid(), signal.SIGKILL)


def _inject_faults(job: TrainJob, comm: Comm, epoch: int, resumed: bool) -> None:
    if resumed or epoch not in (job.fail_after_epoch, job.kill_after_epoch):
        return
    comm.barrier()  # rank 0 has written this epoch's checkpoint before anything dies
    if job.kill_after_epoch == epoch and comm.rank == job.kill_rank:
        os.kill(os.getpid(), signal.SIGKILL)  # a real crash: no exception handling, no cleanup
    if job.fail_after_epoch == epoch:
        raise RuntimeError(f"injected failure after epoch {epoch} (fault-injection test)")


def _write_history(run_dir: Path, history: list[dict]) -> None:
    tmp = run_dir / (HISTORY + ".tmp")
    tmp.write_text(json.dumps(history, indent=1))
    os.replace(tmp, run_dir / HISTORY)


def run_training(job: TrainJob, comm: Comm, log=print) -> TrainResult:
    """Train for ``job.epochs`` (resuming from the run folder's checkpoint), keep the best model.

    Rank 0 writes the best model, a checkpoint and the history after every epoch and logs loss,
    validation metric and throughput.
    """
    spec = ModelSpec.from_dict(job.spec)
    run_dir = Path(job.run_dir)
    device = default_device(comm.local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    model = build_model(spec, seed=job.seed).to(device)
    learning_rate = effective_learning_rate(job.learning_rate, job.lr_scaling, comm.size)
    optimizer = torch.optim.Adam(model.parameters(), lr=learning_rate)
    train_model, optimizer = comm.distribute(model, optimizer)
    result = TrainResult()
    history: list[dict] = []
    metric, higher_is_better = primary_metric(spec.kind)
    best: dict = {"epoch": -1, "value": None}
    start_epoch = 0
    fingerprint = job.fingerprint()
    checkpoint = load_checkpoint(run_dir, fingerprint, job.code_version)
    if checkpoint is not None:
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        # The checkpoint's rate is its run's; a resumed run may have another rank count.
        for group in optimizer.param_groups:
            group["lr"] = learning_rate
        torch.set_rng_state(checkpoint["torch_rng"])
        history = json.loads(checkpoint["history"])
        best = json.loads(checkpoint["best"])
        start_epoch = int(checkpoint["epoch"]) + 1
        result.resumed_from = start_epoch
        if comm.rank == 0:
            log(f"resuming from the checkpoint after epoch {start_epoch}/{job.epochs}")
    comm.broadcast_state(model, optimizer)
    loss_fn = _loss_fn(spec.kind)
    for epoch in range(start_epoch, job.epochs):
        if should_stop(best["epoch"], epoch, job.early_stopping_patience):
            if comm.rank == 0:
                log(f"early stopping: no {metric} improvement since epoch {best['epoch'] + 1}")
            break
        torch.manual_seed(epoch_seed(job.seed, epoch, comm.rank))  # dropout differs by rank, replays on resume
        started = time.monotonic()
        train_loss, rows = _train_epoch(train_model, optimizer, loss_fn, job, spec, comm, epoch, device)
        seconds = time.monotonic() - started
        validation = _evaluate(model, job.validation_files, spec, job.label, job, comm, device)
        value = validation.get(metric, float("nan"))
        better = improved(value, best["value"], higher_is_better)
        rate = rows / seconds if seconds else 0.0
        entry = {"epoch": epoch, "train_loss": train_loss, "validation": validation, "samples_per_second": rate,
                 "samples_per_second_per_worker": rate / comm.size, "seconds": seconds, "rows": rows}
        history.append(entry)
        if better:
            best = {"epoch": epoch, "value": value}
        if comm.rank == 0:
            if better:
                save_model(model, run_dir / BEST_DIR)
            save_checkpoint(run_dir, model, optimizer, epoch, history, best, fingerprint, job.code_version)
            _write_history(run_dir, history)
            log(f"epoch {epoch + 1}/{job.epochs}: loss {train_loss:.4f}  validation {metric} {value:.4f}  "
                f"{rate:,.0f} samples/s ({rate / comm.size:,.0f} per worker; {rows} rows, {seconds:.1f}s)")
        _inject_faults(job, comm, epoch, result.resumed_from is not None)
    result.history = [EpochLog(**h) for h in history]
    result.best_epoch = int(best["epoch"])
    return result


def test_metrics(job: TrainJob, comm: Comm) -> dict[str, float]:
    """Test-split metrics of the best model (every rank scores its share; outputs are gathered)."""
    best_dir = Path(job.run_dir) / BEST_DIR
    comm.barrier()  # rank 0 wrote the best model
    if not (best_dir / WEIGHTS_FILE).exists() or not job.test_files:
        return {}
    device = default_device(comm.local_rank)
    model = load_model(best_dir, device)
    return _evaluate(model, job.test_files, model.spec, job.label, job, comm, device)


test_metrics.__test__ = False  # not a pytest test, despite the name


def train_and_test(job: TrainJob, comm: Comm, log=print) -> dict:
    """Train, then score the test split: the result every entry point returns (rank 0's is authoritative)."""
    result = run_training(job, comm, log)
    return {"rank": comm.rank, "size": comm.size, "history": [asdict(h) for h in result.history],
            "best_epoch": result.best_epoch, "resumed_from": result.resumed_from, "test": test_metrics(job, comm)}


def threads_per_rank(local_size: int, wanted: int | None = None) -> int:
    """Torch intra-op threads per rank: as configured, else the cores shared out so ranks do not
    oversubscribe them (on a busy machine, spinning intra-op threads can slow a small model 10x)."""
    return wanted or max(1, (os.cpu_count() or 2) // max(local_size, 1))


def horovod_entry(job: TrainJob) -> dict:
    """Entry point run by ``horovod.spark.run`` on every rank."""
    import horovod.torch as hvd

    hvd.init()
    torch.set_num_threads(threads_per_rank(hvd.local_size(), job.torch_threads))
    comm = HorovodComm(rank=hvd.rank(), size=hvd.size(), local_rank=hvd.local_rank(), hvd=hvd)
    return train_and_test(job, comm)
