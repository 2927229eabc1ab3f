"""The training stage: one exact Delta version -> Petastorm -> Horovod-on-Spark -> model, card, registry.

Shaped like a Spark ML estimator: ``fit`` returns a ``TabularModel`` whose ``transform`` scores a
DataFrame. ``train.backend: torch_distributor`` runs the same training function through Spark's
TorchDistributor instead of Horovod.

A run's identity is its model version: the dataset, the table version, the configuration and the
code version. One identity trains once: a finished run is not trained or registered again, and
two concurrent runs of it cannot share its run folder (``run_lock``).
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path

from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from shardlake import delta_io, delta_log, plots, registry
from shardlake.config import AppConfig, TrainSettings
from shardlake.folders import Folder
from shardlake.lake import Lake
from shardlake.models.tabular import SPEC_FILE, WEIGHTS_FILE, ModelSpec, weights_digest
from shardlake.ops import tracking
from shardlake.ops.progress import JobProgress
from shardlake.scoring import ModelMismatchError, TabularModel, load_registered
from shardlake.session import guard_py4j_against_forks
from shardlake.stages.ingest import feature_stats_for
from shardlake.stages.reference import training_reference
from shardlake.training.metrics import primary_metric
from shardlake.training.checkpoint import CheckpointError, load_checkpoint
from shardlake.training.elastic import elastic_entry, merge_observed
from shardlake.training.worker import BEST_DIR, TrainJob, horovod_entry

CARD_FILE = "card.json"
CURVE_FILE = "training_curve.png"
LOCK_FILE = ".lock"


class TrainingError(RuntimeError):
    """Training could not run or did not finish; the message says how to resume."""


@dataclass(frozen=True)
class TrainPlan:
    model_version: str
    table_path: str
    table_version: int
    job: TrainJob
    spec: ModelSpec
    config_hash: str


def model_version_for(dataset: str, table_version: int, config_hash: str, code_version: str) -> str:
    """Deterministic: the same config on the same table version, trained by the same code, is the same
    model (and run folder); new code names a new model instead of finding the old one's checkpoint."""
    suffix = hashlib.sha256(json.dumps([config_hash, code_version]).encode()).hexdigest()[:12]
    return f"{dataset}-v{table_version}-{suffix}"


def _target_scale(spark: SparkSession, table_path: str, version: int, label: str) -> dict[str, float]:
    """Mean and standard deviation of a regression label on the training split (the model learns it standardised)."""
    row = (delta_io.read_version(spark, table_path, version).where(F.col("split") == "train")
           .agg(F.mean(label).alias("mean"), F.stddev(label).alias("std")).first())
    return {"target_mean": float(row["mean"] or 0.0), "target_std": float(row["std"] or 1.0)}


def plan(spark: SparkSession, lake: Lake, config: AppConfig, run_id: str | None = None,
         fail_after_epoch: int | None = None, kill_after_epoch: int | None = None,
         code_version: str = "unknown", table_version: int | None = None,
         kill_during_epoch: int | None = None, kill_at_step: int = 1) -> TrainPlan:
    """Resolve the table version, its exact files per split, feature statistics and the run folder.

    ``table_version`` (the version a scheduled run's ingest produced) wins over train.table_version,
    which wins over the table's latest version."""
    spec_ds, train = config.dataset, config.train
    table_path = lake.table(spec_ds.name, "clean")
    if not delta_io.table_exists(spark, table_path):
        raise TrainingError(f"{table_path}: no clean table; run the ingest first")
    version = table_version if table_version is not None else train.table_version
    if version is None:
        version = delta_io.latest_version(spark, table_path)
    stats = feature_stats_for(spark, lake, spec_ds, version)
    label = spec_ds.label
    scale = _target_scale(spark, table_path, version, label.column) if label.kind == "regression" else {}
    spec = ModelSpec(kind=label.kind, numeric=list(spec_ds.features.numeric),
                     categorical=list(spec_ds.features.categorical), vocab=stats.vocab, mean=stats.mean,
                     std=stats.std, hidden=list(train.hidden), embedding_dim=train.embedding_dim,
                     dropout=train.dropout, architecture=train.architecture, **scale)
    files = {s: delta_log.snapshot_files(table_path, version, [("split", "=", s)])
             for s in ("train", "validation", "test")}
    for split in ("train", "validation"):
        if not files[split]:
            raise TrainingError(f"{table_path}@v{version}: the {split} split is empty")
    config_hash = config.fingerprint()
    model_version = run_id or model_version_for(spec_ds.name, version, config_hash, code_version)
    run_dir = Folder(lake.model_location(spec_ds.name, model_version), lake.store.settings).make()
    job = TrainJob(train_files=files["train"], validation_files=files["validation"], test_files=files["test"],
                   spec=spec.to_dict(), label=label.column, run_dir=str(run_dir), epochs=train.epochs,
                   batch_size=train.batch_size, learning_rate=train.learning_rate, seed=train.seed,
                   lr_scaling=train.lr_scaling,
                   early_stopping_patience=train.early_stopping_patience, loader_workers=train.loader_workers,
                   loader_pool=train.loader_pool, shuffle_buffer=train.shuffle_buffer,
                   torch_threads=train.torch_threads, code_version=code_version,
                   fail_after_epoch=fail_after_epoch, kill_after_epoch=kill_after_epoch,
                   kill_during_epoch=kill_during_epoch, kill_at_step=kill_at_step, store=lake.store.settings)
    return TrainPlan(model_version, table_path, version, job, spec, config_hash)


def _lock_file(run_dir: Folder) -> Path:
    """The run folder's own lock file; for a folder on an object store (which has no locks), one in this
    machine's temp folder named by the folder's URL: runs on this driver machine exclude each other, and
    drivers elsewhere are kept apart by the one-writing-driver rule of a lake on S3 (README)."""
    if run_dir.is_local:
        return Path(run_dir.file(LOCK_FILE))
    folder = Path(tempfile.gettempdir()) / "shardlake-locks"
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f"{hashlib.sha256(run_dir.location.encode()).hexdigest()[:24]}.lock"


@contextmanager
def run_lock(run_dir: Folder | str | Path) -> Iterator[None]:
    """Hold the run folder exclusively while inside: two runs of one model version would overwrite each
    other's checkpoints and weights. A second run fails at once (non-blocking) rather than wait."""
    folder = Folder.of(run_dir)
    lock = _lock_file(folder)
    # flock belongs to the open file: the OS releases it when the holder exits, however it dies (even
    # SIGKILL), so a crashed run never leaves a stale lock and no cleanup is needed.
    with lock.open("a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as err:
            raise TrainingError(f"{folder}: another run of the same model version is in progress (it holds "
                                f"{lock}); wait for it to finish, then start this run again") from err
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _run_horovod(job: TrainJob, num_proc: int, start_timeout: int) -> list[dict]:
    """Run ``horovod_entry`` on ``num_proc`` Spark tasks (Gloo)."""
    import horovod.spark

    # horovod.spark.run forks the driver; a session not built by build_session (a notebook's) needs the guard too.
    guard_py4j_against_forks()
    return horovod.spark.run(horovod_entry, args=(job,), num_proc=num_proc, use_gloo=True,
                             start_timeout=start_timeout, verbose=0)


def _run_horovod_elastic(job: TrainJob, train: TrainSettings) -> list[dict]:
    """Run ``elastic_entry`` under ``horovod.spark.run_elastic``: between min_proc and max_proc ranks (Gloo)."""
    import horovod.spark

    guard_py4j_against_forks()
    e = train.elastic
    return horovod.spark.run_elastic(elastic_entry, args=(job, e.commit_every_steps), num_proc=train.num_proc,
                                     min_num_proc=e.min_proc, max_num_proc=e.max_proc or train.num_proc,
                                     start_timeout=train.start_timeout_s, elastic_timeout=e.timeout_s,
                                     reset_limit=e.reset_limit, verbose=0)


def _run_torch_distributor(job: TrainJob, num_proc: int) -> list[dict]:
    """torchrun on the driver (local_mode). use_gpu=False leaves GPU choice to the ranks (by local rank)."""
    from pyspark.ml.torch.distributor import TorchDistributor

    from shardlake.training.distributor import distributor_entry

    result = TorchDistributor(num_processes=num_proc, local_mode=True, use_gpu=False).run(distributor_entry, job)
    return [result]


def _card(config: AppConfig, p: TrainPlan, rank0: dict, seconds: float, weights_sha256: str) -> dict:
    """The model card: what was trained on, how, by which code, how well, and the weights' digest."""
    metric, _ = primary_metric(p.spec.kind)
    best = rank0["history"][rank0["best_epoch"]] if rank0["best_epoch"] >= 0 else {"validation": {}}
    return {
        "model_version": p.model_version,
        "dataset": config.dataset.name,
        "table_path": p.table_path,
        "table_version": p.table_version,
        "train_files": len(p.job.train_files),
        "config": config.public_dump(),  # secret-looking values masked
        "config_hash": p.config_hash,
        "code_version": p.job.code_version,
        "backend": config.train.backend,
        "num_proc": config.train.num_proc,
        "model_spec": p.spec.to_dict(),
        # What inference must apply, spelled out (also inside model_spec and the model's buffers).
        "feature_stats": {"mean": p.spec.mean, "std": p.spec.std, "vocab": p.spec.vocab,
                          "target_mean": p.spec.target_mean, "target_std": p.spec.target_std},
        "label": config.dataset.label.model_dump(),
        "key": list(config.dataset.key),
        "metric_name": metric,
        "validation_metric": best["validation"].get(metric, float("nan")),
        "best_epoch": rank0["best_epoch"],
        "epochs_run": len(rank0["history"]),
        "history": rank0["history"],
        "test_metrics": rank0["test"],
        "resumed_from": rank0["resumed_from"],
        # In-job recovery: how often the training stage was started again, and why.
        "restarts": rank0.get("restarts", 0),
        "restart_errors": rank0.get("restart_errors", []),
        # Elastic training: ring changes survived and the ring sizes trained in (None: not elastic).
        "elastic": rank0.get("elastic"),
        "seconds": round(seconds, 2),
        "model_dir": p.job.run_dir,
        # The registered weights: a scorer can check that the file it loads is the one evaluated here.
        "weights_sha256": weights_sha256,
    }


def _check_resumable(p: TrainPlan, log: Callable[[str], None]) -> None:
    """Fail before any worker starts if the run folder holds a checkpoint this job may not resume."""
    try:
        checkpoint = load_checkpoint(p.job.folder, p.job.fingerprint(), p.job.code_version)
    except CheckpointError as err:
        raise TrainingError(str(err)) from err
    if checkpoint is not None:
        log(f"{p.model_version}: resuming after epoch {int(checkpoint['epoch']) + 1} of {p.job.epochs}")


def _identity(p: TrainPlan) -> dict:
    """What a registered card must share with a plan to be that plan's finished run: the model version
    alone is not enough, as an explicit run id can name a run of another config, table or code version."""
    return {"table_path": p.table_path, "table_version": p.table_version, "config_hash": p.config_hash,
            "code_version": p.job.code_version}


def _finished_card(spark: SparkSession, lake: Lake, p: TrainPlan) -> dict | None:
    """The registry's card of this plan's model version when that run already finished, else None.

    A card of the same version but another identity (an explicit run id reused for another config,
    table or code version) is refused: returning it would hand back a model this plan did not ask for.
    """
    card = registry.model_card(spark, lake.registry(), p.model_version)
    if card is None:
        return None
    differs = {k: (card.get(k), planned) for k, planned in _identity(p).items() if card.get(k) != planned}
    if differs:
        detail = "; ".join(f"{k}: registered {old!r}, this run {new!r}" for k, (old, new) in differs.items())
        raise TrainingError(f"model version {p.model_version} is already registered for another run ({detail}); "
                            f"start a new run id")
    return dict(card)


def _registered_model(card: Mapping) -> TabularModel:
    """A finished run's model, checked against its card (a folder changed since is refused, not returned)."""
    try:
        return load_registered(card)
    except (ModelMismatchError, FileNotFoundError) as err:
        raise TrainingError(f"{card['model_version']} is registered but its folder no longer holds the registered "
                            f"model: {err}") from err


def _run_backend(config: AppConfig, job: TrainJob) -> list[dict]:
    if config.train.elastic is not None:
        return _run_horovod_elastic(job, config.train)
    if config.train.backend == "horovod":
        return _run_horovod(job, config.train.num_proc, config.train.start_timeout_s)
    return _run_torch_distributor(job, config.train.num_proc)


def _train(config: AppConfig, p: TrainPlan, log: Callable[[str], None] = print,
           progress: JobProgress | None = None) -> dict:
    """Run the configured backend on the plan's job; rank 0's result, with the restarts it took.

    A failed stage (a rank or executor lost: every rank of the barrier stage stops) is started again
    from the last epoch checkpoint, up to train.max_restarts times, so the run ends with the same
    epochs as one that never failed; only then does the job fail, saying how to resume by hand.
    """
    errors: list[str] = []
    while True:
        try:
            with progress.training(p.job.folder, config.train.epochs) if progress else nullcontext():
                results = _run_backend(config, p.job)
            break
        except Exception as err:  # Horovod/Spark wrap worker errors; keep the cause readable
            cause = " ".join(str(err).split())[:800]
            if len(errors) >= config.train.max_restarts:
                spent = f" after {len(errors)} restart(s)" if errors else ""
                raise TrainingError(f"training run {p.model_version} failed{spent}: {cause}; checkpoints are in "
                                    f"{p.job.run_dir}: start the same run again to resume") from err
            errors.append(cause[:300])
            log(f"{p.model_version}: the training stage failed ({cause[:200]}); restart {len(errors)} of "
                f"{config.train.max_restarts} from the last checkpoint")
    rank0 = next(r for r in results if r["rank"] == 0)
    elastic = merge_observed(results) if config.train.elastic is not None else None
    return {**rank0, "restarts": len(errors), "restart_errors": errors, "elastic": elastic}


def fit(spark: SparkSession, lake: Lake, config: AppConfig, code_version: str = "unknown",
        run_id: str | None = None, fail_after_epoch: int | None = None,
        log: Callable[[str], None] = print, kill_after_epoch: int | None = None,
        table_version: int | None = None, kill_during_epoch: int | None = None,
        kill_at_step: int = 1, progress: JobProgress | None = None) -> tuple[TabularModel, dict]:
    """Train on one table version with the configured backend; write model, card, curve; register it.

    Re-running with the same run id resumes from the run folder's last checkpoint; re-running a run
    the registry already holds returns its model and card untouched (no training, no registration).
    ``fail_after_epoch``/``kill_after_epoch``/``kill_during_epoch`` inject a failure (tests of recovery);
    a failed training stage is started again up to train.max_restarts times (``_train``). ``progress``:
    the job's live display, which shows rank 0's epoch, step and samples/s while the ranks train.
    """
    started = time.monotonic()
    p = plan(spark, lake, config, run_id, fail_after_epoch, kill_after_epoch, code_version, table_version,
             kill_during_epoch, kill_at_step)
    run_dir = p.job.folder
    # Held from before the registry check to the registration: one run of a model version at a time.
    with run_lock(run_dir):
        finished = _finished_card(spark, lake, p)
        if finished is not None:
            log(f"{p.model_version}: already trained and registered (code {code_version}); "
                f"returning the registered model, not training it again")
            _track(config, lake, finished, log)  # logs it if an earlier run's logging failed
            return _registered_model(finished), finished
        log(f"training {p.model_version} on {p.table_path}@v{p.table_version} ({len(p.job.train_files)} train "
            f"files, backend {config.train.backend}, {config.train.num_proc} processes, code {code_version})")
        _check_resumable(p, log)
        rank0 = _train(config, p, log, progress)
        for name in (WEIGHTS_FILE, SPEC_FILE):
            run_dir.copy(f"{BEST_DIR}/{name}", name)
        card = _card(config, p, rank0, time.monotonic() - started, weights_digest(run_dir))
        log(f"{p.model_version}: profiling the training split for label-free drift")
        training = delta_io.read_version(spark, p.table_path, p.table_version).where(F.col("split") == "train")
        rows = delta_io.partition_row_counts(spark, p.table_path, p.table_version, "split").get("train", 0)
        card["reference"] = training_reference(TabularModel.load(run_dir, p.model_version), training, rows,
                                               config.infer.batch_size, config.train.reference_sample_rows)
        run_dir.write_text(CARD_FILE, json.dumps(card, indent=2, sort_keys=True, default=str))
        plots.training_curve(rank0["history"], card["metric_name"], run_dir.file(CURVE_FILE), p.model_version)
        registry.register(spark, lake.registry(), card)
        _track(config, lake, card, log)
    return TabularModel.load(run_dir, p.model_version), card


def _track(config: AppConfig, lake: Lake, card: Mapping, log: Callable[[str], None]) -> None:
    """Log the run to MLflow (once per model version); a store that cannot be written fails the job."""
    try:
        version = tracking.log_training(config.monitoring.mlflow, lake, card)
    except tracking.TrackingError as err:
        raise TrainingError(f"{card['model_version']} is trained and registered, but {err}; run the same "
                            f"training again to log it") from err
    if version is not None:
        log(f"{card['model_version']}: MLflow model {tracking.registered_model_name(card['dataset'])} "
            f"version {version}")


def summary(card: dict) -> dict:
    """The lines a person (and the job's result file) wants after training, with the faults it came through."""
    lines = {k: card[k] for k in ("model_version", "table_path", "table_version", "metric_name",
                                  "validation_metric", "best_epoch", "test_metrics", "seconds")}
    return {**lines, "restarts": card.get("restarts", 0), "elastic": card.get("elastic")}

