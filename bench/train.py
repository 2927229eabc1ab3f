"""Training throughput per worker: Horovod-on-Spark over Petastorm against a plain in-memory torch loop.

The reference is the same model, batch size and optimizer stepping over tensors already in memory
(no loader, no collectives), with the torch threads one worker gets (cores / workers). Each
Horovod run trains ``--epochs`` epochs over the training split of one clean-table version; its
per-worker samples/s (training time only, as the run's history records it) is compared with the
reference measured in the same invocation. Epoch 1 (start-up) is left out of both averages.

    python bench/train.py                          # ./lake's flights clean table, latest version
    python bench/train.py --synthetic-rows 200000  # no lake needed

Recorded on the 2-core development machine with other jobs running (flights v16, 261,952 rows,
batch 1024, MLP 64-32 + 3 embeddings, 3 epochs): see the figures printed at the end of a run and
the commit that added this file.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

warnings.filterwarnings("ignore", category=FutureWarning)
warnings.filterwarnings("ignore", category=DeprecationWarning)

import numpy as np  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import torch  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "libs"))
sys.path.insert(0, str(REPO / "bench"))

from loader import CATEGORICAL, LABEL, NUMERIC, synthetic_files, train_files  # noqa: E402

from shardlake.models.tabular import ModelSpec, build_model, encode  # noqa: E402
from shardlake.training.petastorm_fix import column_values  # noqa: E402
from shardlake.training.sample import spec_from_files  # noqa: E402
from shardlake.training.worker import TrainJob, epoch_seed, threads_per_rank  # noqa: E402


def in_memory(files: list[str], spec: ModelSpec) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The whole training split as tensors (the reference loop's input)."""
    parts = []
    for f in files:
        table = pq.read_table(f.removeprefix("file://"), columns=[*spec.numeric, *spec.categorical, LABEL])
        frame = {c: column_values(table.column(c)) for c in table.column_names}
        numeric, categorical = encode(frame, spec)
        parts.append((numeric, categorical, np.asarray(frame[LABEL], dtype=np.float32)))
    return tuple(torch.from_numpy(np.concatenate(p)) for p in zip(*parts))  # type: ignore[return-value]


def reference_rates(data, spec: ModelSpec, batch_size: int, learning_rate: float, epochs: int, threads: int,
                    seed: int) -> list[float]:
    """Samples/s per epoch of a plain loop: shuffled index, slice, forward, backward, Adam step."""
    torch.set_num_threads(threads)
    model = build_model(spec, seed=seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=learning_rate)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    numeric, categorical, target = data
    rates = []
    for epoch in range(epochs):
        torch.manual_seed(epoch_seed(seed, epoch))
        order = torch.randperm(len(target))
        model.train()
        started = time.perf_counter()
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            optimizer.zero_grad()
            loss = loss_fn(model(numeric[idx], categorical[idx]), target[idx])
            loss.backward()
            optimizer.step()
        rates.append(len(order) / (time.perf_counter() - started))
    return rates


def distributed_rates(job: TrainJob, workers: int, backend: str) -> list[float]:
    """Per-worker samples/s per epoch of the training stage's run on ``backend``."""
    from shardlake.stages.train import _run_horovod, _run_torch_distributor

    results = (_run_horovod(job, workers, start_timeout=600) if backend == "horovod"
               else _run_torch_distributor(job, workers))
    rank0 = next(r for r in results if r["rank"] == 0)
    return [h["samples_per_second_per_worker"] for h in rank0["history"]]


def steady(rates: list[float]) -> float:
    """Mean without the first epoch (start-up), or the only epoch there is."""
    return statistics.mean(rates[1:] if len(rates) > 1 else rates)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--lake", type=Path, default=REPO / "lake")
    p.add_argument("--dataset", default="flights")
    p.add_argument("--version", type=int, default=None)
    p.add_argument("--synthetic-rows", type=int, default=0)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=1024)
    p.add_argument("--learning-rate", type=float, default=0.003)
    p.add_argument("--workers", default="1,2", help="process counts to measure")
    p.add_argument("--backends", default="horovod,torch_distributor")
    p.add_argument("--loader-workers", type=int, default=1)
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads per worker and for the reference (default: cores / workers)")
    args = p.parse_args(argv)
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    scratch = Path(tempfile.mkdtemp(prefix="bench-train-"))
    if args.synthetic_rows or not (args.lake / args.dataset / "clean" / "_delta_log").exists():
        files, source = synthetic_files(args.synthetic_rows or 200_000, scratch), "synthetic"
        validation = files[-1:]
    else:
        files, version = train_files(args.lake, args.dataset, args.version)
        source = f"{args.lake / args.dataset / 'clean'}@v{version}"
        from deltalake import DeltaTable

        validation = sorted(DeltaTable(str(args.lake / args.dataset / "clean"), version=version)
                            .file_uris(partition_filters=[("split", "=", "validation")]))
    spec = spec_from_files(files, NUMERIC, CATEGORICAL, "binary", LABEL)
    data = in_memory(files, spec)
    print(f"source {source}: {len(data[2]):,} training rows, {len(files)} files, batch {args.batch_size}, "
          f"{args.epochs} epochs, {os.cpu_count()} cores")

    from shardlake.session import build_session

    spark = build_session(f"local[{max(int(w) for w in args.workers.split(','))}]", "bench-train",
                          {"spark.ui.enabled": "false"})
    spark.sparkContext.setLogLevel("ERROR")
    lines = []
    for workers in [int(w) for w in args.workers.split(",")]:
        threads = threads_per_rank(workers, args.threads)
        reference = steady(reference_rates(data, spec, args.batch_size, args.learning_rate, args.epochs, threads, 42))
        for backend in args.backends.split(","):
            run_dir = scratch / f"run-{backend}-{workers}"
            run_dir.mkdir()
            job = TrainJob(train_files=files, validation_files=validation, test_files=[], spec=spec.to_dict(),
                           label=LABEL, run_dir=str(run_dir), epochs=args.epochs, batch_size=args.batch_size,
                           learning_rate=args.learning_rate, seed=42, early_stopping_patience=args.epochs,
                           loader_workers=args.loader_workers, torch_threads=threads)
            measured = steady(distributed_rates(job, workers, backend))
            lines.append((backend, workers, threads, measured, reference))
            print(f"{backend}, {workers} worker(s): {measured:,.0f} samples/s per worker vs in-memory loop "
                  f"({threads} thread(s)) {reference:,.0f} -> ratio {measured / reference:.2f}", flush=True)
    print(f"{'backend':>17} {'workers':>7} {'threads/worker':>14} {'per worker':>11} {'in-memory':>10} {'ratio':>6}")
    for backend, workers, threads, measured, reference in lines:
        print(f"{backend:>17} {workers:>7} {threads:>14} {measured:>11,.0f} {reference:>10,.0f} "
              f"{measured / reference:>6.2f}")
    print("RATIO per worker (target >= 0.9): "
          + ", ".join(f"{b} x{w} {m / r:.2f}" for b, w, _, m, r in lines))
    spark.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
