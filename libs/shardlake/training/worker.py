"""The training function every Horovod rank runs: synchronous data-parallel SGD with checkpoints.

It receives plain values only (file lists, model spec, hyper-parameters, run folder), so the same
function runs under ``horovod.spark.run`` and, through ``run_with_torch_distributor``, under Spark's
TorchDistributor.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from shardlake.models.tabular import ModelSpec, build_model, default_device, save_model
from shardlake.training.data import batches
from shardlake.training.metrics import metrics_for, primary_metric

CHECKPOINT = "checkpoint.pt"
HISTORY = "history.json"


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
    fail_after_epoch: int | None = None  # fault injection for recovery tests


@dataclass
class Comm:
    """The collective operations training needs; Horovod's, or single-process ones."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    hvd: object | None = None

    def allreduce_sum(self, value: np.ndarray) -> np.ndarray:
        if self.hvd is None:
            return value
        return self.hvd.allreduce(torch.as_tensor(value), op=self.hvd.Sum).numpy()

    def allgather(self, value: np.ndarray) -> np.ndarray:
        if self.hvd is None:
            return value
        return self.hvd.allgather(torch.as_tensor(value)).numpy()


@dataclass
class EpochLog:
    epoch: int
    train_loss: float
    validation: dict[str, float]
    samples_per_second: float
    seconds: float


@dataclass
class TrainResult:
    history: list[EpochLog] = field(default_factory=list)
    test: dict[str, float] = field(default_factory=dict)
    best_epoch: int = -1
    resumed_from: int | None = None


def _loss_fn(kind: str):
    return torch.nn.BCEWithLogitsLoss(reduction="none") if kind == "binary" else torch.nn.MSELoss(reduction="none")


def _shard(urls: list[str], comm: Comm) -> tuple[list[str], int, int]:
    # Petastorm needs at least one row group per shard; tiny tables go to rank 0 alone.
    if len(urls) >= comm.size:
        return urls, comm.rank, comm.size
    return (urls if comm.rank == 0 else []), 0, 1


def _evaluate(model, urls, spec: ModelSpec, label: str, job: TrainJob, comm: Comm, device) -> dict[str, float]:
    files, rank, size = _shard(urls, comm)
    outputs, labels = [np.zeros(0, np.float32)], [np.zeros(0, np.float32)]
    model.eval()
    with torch.no_grad():
        if files:
            for numeric, categorical, target in batches(files, spec, label, 8192, rank, size, shuffle=False,
                                                        workers=job.loader_workers):
                out = model.predict(torch.from_numpy(numeric).to(device), torch.from_numpy(categorical).to(device))
                outputs.append(out.float().cpu().numpy())
                labels.append(target)
    all_out = comm.allgather(np.concatenate(outputs))
    all_labels = comm.allgather(np.concatenate(labels))
    return metrics_for(spec.kind, all_labels, all_out)


def _save_checkpoint(run_dir: Path, model, optimizer, epoch: int, history: list[dict], best: dict) -> None:
    state = {
        "epoch": epoch,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "torch_rng": torch.get_rng_state(),
        "history": json.dumps(history),
        "best": json.dumps(best),
    }
    tmp = run_dir / (CHECKPOINT + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, run_dir / CHECKPOINT)  # atomic: a crash never leaves a torn checkpoint


def _load_checkpoint(run_dir: Path) -> dict | None:
    path = run_dir / CHECKPOINT
    return torch.load(path, map_location="cpu", weights_only=True) if path.exists() else None


def _train_epoch(model, optimizer, loss_fn, job: TrainJob, spec: ModelSpec, comm: Comm, epoch: int, device):
    """One pass over this rank's share; ranks step together until every rank's data is used up."""
    model.train()
    files, rank, size = _shard(job.train_files, comm)
    stream = iter(batches(files, spec, job.label, job.batch_size, rank, size,
                          seed=job.seed * 1000 + epoch, workers=job.loader_workers)) if files else iter(())
    total_loss, total_rows = 0.0, 0
    while True:
        batch = next(stream, None)
        # Every rank must make the same number of optimizer steps (each is an allreduce).
        active = comm.allreduce_sum(np.array([0 if batch is None else 1], dtype=np.int64))[0]
        if active == 0:
            break
        if batch is None:
            numeric = torch.zeros((1, len(spec.numeric)), dtype=torch.float32)
            categorical = torch.zeros((1, len(spec.categorical)), dtype=torch.int64)
            target, weight = torch.zeros(1), 0.0
        else:
            numeric, categorical, target = (torch.from_numpy(a) for a in batch)
            weight = 1.0
        optimizer.zero_grad()
        out = model(numeric.to(device), categorical.to(device))
        loss = loss_fn(out, target.to(device)).mean() * weight
        loss.backward()
        optimizer.step()
        if batch is not None:
            total_loss += float(loss.detach()) * len(target)
            total_rows += len(target)
    sums = comm.allreduce_sum(np.array([total_loss, total_rows], dtype=np.float64))
    return float(sums[0] / max(sums[1], 1)), int(sums[1])


def run_training(job: TrainJob, comm: Comm, log=print) -> TrainResult:
    """Train for ``job.epochs`` (resuming from the run folder's checkpoint), keep the best model."""
    spec = ModelSpec.from_dict(job.spec)
    run_dir = Path(job.run_dir)
    device = default_device(comm.local_rank)
    torch.manual_seed(job.seed)
    model = build_model(spec, seed=job.seed).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=job.learning_rate * comm.size)
    if comm.hvd is not None:
        optimizer = comm.hvd.DistributedOptimizer(optimizer, named_parameters=model.named_parameters())
    result = TrainResult()
    history: list[dict] = []
    metric, higher_is_better = primary_metric(spec.kind)
    best = {"epoch": -1, "value": None}
    start_epoch = 0
    checkpoint = _load_checkpoint(run_dir)
    if checkpoint is not None:
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        torch.set_rng_state(checkpoint["torch_rng"])
        history = json.loads(checkpoint["history"])
        best = json.loads(checkpoint["best"])
        start_epoch = int(checkpoint["epoch"]) + 1
        result.resumed_from = start_epoch
        if comm.rank == 0:
            log(f"resuming from checkpoint after epoch {start_epoch - 1}")
    if comm.hvd is not None:
        comm.hvd.broadcast_parameters(model.state_dict(), root_rank=0)
        comm.hvd.broadcast_optimizer_state(optimizer, root_rank=0)
    loss_fn = _loss_fn(spec.kind)
    for epoch in range(start_epoch, job.epochs):
        if best["epoch"] >= 0 and epoch - best["epoch"] > job.early_stopping_patience:
            if comm.rank == 0:
                log(f"early stopping: no {metric} improvement since epoch {best['epoch']}")
            break
        started = time.monotonic()
        train_loss, rows = _train_epoch(model, optimizer, loss_fn, job, spec, comm, epoch, device)
        seconds = time.monotonic() - started
        validation = _evaluate(model, job.validation_files, spec, job.label, job, comm, device)
        value = validation.get(metric, float("nan"))
        improved = best["value"] is None or (value > best["value"] if higher_is_better else value < best["value"])
        entry = {"epoch": epoch, "train_loss": train_loss, "validation": validation,
                 "samples_per_second": rows / seconds if seconds else 0.0, "seconds": seconds}
        history.append(entry)
        if comm.rank == 0:
            if improved:
                best = {"epoch": epoch, "value": value}
                save_model(model, run_dir / "best")
            log(f"epoch {epoch + 1}/{job.epochs}: loss {train_loss:.4f}  validation {metric} {value:.4f}  "
                f"{entry['samples_per_second']:.0f} samples/s ({rows} rows, {seconds:.1f}s)")
            _save_checkpoint(run_dir, model, optimizer, epoch, history, best)
        elif improved:
            best = {"epoch": epoch, "value": value}
        if job.fail_after_epoch is not None and epoch == job.fail_after_epoch and result.resumed_from is None:
            raise RuntimeError(f"injected failure after epoch {epoch} (fault-injection test)")
    result.history = [EpochLog(**h) for h in history]
    result.best_epoch = int(best["epoch"])
    return result


def horovod_entry(job: TrainJob) -> dict:
    """Entry point run by ``horovod.spark.run`` on every rank; returns the history (rank 0 authoritative)."""
    import horovod.torch as hvd

    hvd.init()
    torch.set_num_threads(max(1, (os.cpu_count() or 2) // hvd.local_size()))
    comm = Comm(rank=hvd.rank(), size=hvd.size(), local_rank=hvd.local_rank(), hvd=hvd)
    result = run_training(job, comm)
    test = _test_metrics(job, comm)
    return {"rank": comm.rank, "size": comm.size, "history": [h.__dict__ for h in result.history],
            "best_epoch": result.best_epoch, "resumed_from": result.resumed_from, "test": test}


def _test_metrics(job: TrainJob, comm: Comm) -> dict[str, float]:
    """Test-split metrics of the best model (every rank scores its share; rank 0 gathers)."""
    from shardlake.models.tabular import load_model

    best_dir = Path(job.run_dir) / "best"
    if comm.hvd is not None:
        comm.hvd.barrier()
    if not (best_dir / "model.safetensors").exists():
        return {}
    model = load_model(best_dir, default_device(comm.local_rank))
    return _evaluate(model, job.test_files, model.spec, job.label, job, comm, default_device(comm.local_rank))
