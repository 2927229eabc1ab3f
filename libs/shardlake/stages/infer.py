"""The inference stage: map (score partitions) -> MERGE predictions -> reduce (per-shard summary).

Predictions are keyed by (key, model version) and carry the content hash of the clean row they
describe. Each run's predictions land in one Delta MERGE commit, so a run that dies mid-write
leaves the table as it was and the next run completes it; a re-run updates only rows whose
prediction or source row changed, so it writes nothing twice. Incremental runs score only the
rows the model version has not scored as they are now: new keys and rows the ingest changed.

The stage orchestrates: the writes are ``infer_write``'s, the reduce stage's arithmetic
``transforms.summary``'s, the plots ``plots``'.
"""
from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field

import pandas as pd
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from shardlake import delta_io, delta_log, plots, quantize, registry
from shardlake.config import AppConfig, InferSettings, MlflowSettings
from shardlake.folders import Folder
from shardlake.lake import Lake
from shardlake.ops import tracking
from shardlake.predictions import SCORE, SOURCE_ROW_HASH
from shardlake.scoring import ModelMismatchError, TabularModel, load_registered
from shardlake.stages import infer_write as W
from shardlake.stages.reference import counts_now
from shardlake.transforms import incremental as I
from shardlake.transforms import drift as D
from shardlake.transforms import summary as S
from shardlake.transforms.clean import ROW_HASH, SHARD, SPLIT

PLOT_FILE = "score_distribution.png"
THRESHOLD = 0.5  # a binary model's decision threshold (the map stage's default)
REPORT_FILE = "report.json"
COHORT = "cohort"  # 'new' for a row the model's training version did not hold as it is, else 'seen'


class InferenceError(RuntimeError):
    """Inference could not run: no model, no table, bad input, or the map/write stage failed."""


@dataclass
class InferReport:
    model_version: str
    source_table: str
    source_version: int
    logical_date: str
    mode: str = "full"
    kind: str = "binary"
    quantized: bool = False
    rows_scored: int = 0
    rows_inserted: int = 0
    rows_updated: int = 0
    predictions_version: int | None = None
    summary: list[dict] = field(default_factory=list)
    comparison: dict = field(default_factory=dict)
    drift: dict = field(default_factory=dict)
    sanity_failed: dict = field(default_factory=dict)
    distribution_drift: dict = field(default_factory=dict)
    quantization: dict = field(default_factory=dict)
    run_dir: str | None = None
    plot: str | None = None
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


def resolve_card(spark: SparkSession, lake: Lake, dataset: str, model_version: str | None,
                 mlflow: MlflowSettings | None = None) -> dict:
    """The requested model's card, else the production model's: the one MLflow's alias names (``mlflow``,
    default the embedded store), which must be the lake registry's production row, card from the registry."""
    if not model_version:
        production = registry.production_model(spark, lake.registry(), dataset)
        try:
            model_version = tracking.production_version(mlflow or MlflowSettings(), lake, dataset,
                                                        production["model_version"] if production else None)
        except tracking.TrackingError as err:
            raise InferenceError(str(err)) from err
    card = registry.card_for(spark, lake.registry(), dataset, model_version)
    if card is None:
        wanted = f"model {model_version!r}" if model_version else f"a production model for {dataset!r}"
        raise InferenceError(f"{lake.registry()}: no {wanted}; train (and promote) one first, "
                             "or pass infer.model_version")
    return dict(card)


def load_model(card: Mapping) -> TabularModel:
    """The card's model, refused when its folder no longer holds the spec and weights the card recorded."""
    try:
        return load_registered(card)
    except ModelMismatchError as err:
        raise InferenceError(str(err)) from err


def score(model: TabularModel, source: DataFrame, key: Sequence[str], label: str | None, batch_size: int,
          quantize: bool = False, fail_on_partition: int | None = None) -> DataFrame:
    """The map stage: the model's transform over the source, keeping key, shard, row hash and label."""
    passthrough = [*key, SHARD, SOURCE_ROW_HASH, *([label] if label else [])]
    return model.transform(source.withColumnRenamed(ROW_HASH, SOURCE_ROW_HASH), passthrough, batch_size,
                           threshold=THRESHOLD, quantize=quantize, fail_on_partition=fail_on_partition)


def _sample(df: DataFrame, columns: Sequence[str], rows: int, limit: int, seed: int) -> pd.DataFrame:
    """At most about ``limit`` rows of ``columns``, a seeded sample when ``df`` holds ``rows`` > ``limit``."""
    picked = df.select(*[F.col(c) for c in dict.fromkeys(columns)])
    if rows > limit:
        picked = picked.sample(fraction=min(1.0, 1.2 * limit / rows), seed=seed).limit(limit)
    return picked.toPandas()


def _plot(current: DataFrame, aggregates: list[dict], label: str | None, kind: str, rows: int, limit: int,
          path, title: str):
    """Score distribution PNG: binary from the reduce stage's histogram (every row, no extra pass),
    regression from a seeded sample of at most ``limit`` rows."""
    if kind == "binary":
        edges, series = S.label_histogram(aggregates, label)
        return plots.binned_histogram(edges, series, path, title, threshold=THRESHOLD)
    sample = _sample(current, [SCORE, *([label] if label else [])], rows, limit, seed=7)
    return plots.score_histogram(plots.score_series(sample, label, kind, SCORE), path, title)


def _quantization_report(source: DataFrame, model: TabularModel, label: str | None, rows: int, limit: int,
                         batch_size: int) -> dict:
    """Float against int8 on a seeded sample of the source: metric change and speed change (one thread)."""
    features = [*model.spec.numeric, *model.spec.categorical, *([label] if label else [])]
    return quantize.compare(model.spec, model.weights, _sample(source, features, rows, limit, seed=11), label,
                            batch_size, threads=1)


def _cohorts(spark: SparkSession, source: DataFrame, card: Mapping, table_path: str, version: int,
             key: Sequence[str]) -> DataFrame:
    """``source`` marked 'seen'/'new' against the table version the model was trained on."""
    trained = card.get("table_version")
    if card.get("table_path") != table_path or trained is None:
        return source.withColumn(COHORT, F.lit("new"))  # trained on another table: it saw none of these rows
    trained_on = None if int(trained) == version else delta_io.read_version(spark, table_path, int(trained))
    return I.mark_new(source, trained_on, key, ROW_HASH, COHORT)


def _reduce(current: DataFrame, label: str | None, kind: str, card: Mapping, settings: InferSettings,
            same_version: bool, report: InferReport) -> list[dict]:
    """The reduce stage: aggregates per shard, split and cohort -> summary; the like-for-like checks against
    the card (``transforms.drift``): the test split of the training version, and the rows new to the model."""
    groups = [SHARD, *([SPLIT] if SPLIT in current.columns else []), COHORT]
    aggregates = [r.asDict() for r in S.shard_aggregates(current, label, kind, groups).collect()]
    report.summary = S.summarize(aggregates, kind, labelled=label is not None, groups=groups)
    scopes = {r["scope"]: r for r in report.summary}
    test_metrics = card.get("test_metrics", {})
    report.comparison = {}
    if label is not None and same_version and f"{SPLIT}=test" in scopes:
        report.comparison["sanity"] = D.sanity_check(scopes[f"{SPLIT}=test"], test_metrics, kind)
    if label is not None and f"{COHORT}=new" in scopes:
        report.comparison["new_rows"] = D.compare_new_rows(scopes[f"{COHORT}=new"], test_metrics,
                                                           settings.drift_tolerance, kind, settings.drift_z)
    reference = card.get("reference") or {}
    if reference and scopes.get(f"{COHORT}=new", {}).get("rows"):
        new_rows = current.where(F.col(COHORT) == F.lit("new"))
        report.comparison["distributions"] = D.compare_distributions(reference, counts_now(new_rows, reference),
                                                                     settings.psi_threshold)
    report.drift = {k: v for k, v in report.comparison.get("new_rows", {}).items() if v["drifted"]}
    report.distribution_drift = {k: v for k, v in report.comparison.get("distributions", {}).items()
                                 if v["drifted"]}
    report.sanity_failed = {k: v for k, v in report.comparison.get("sanity", {}).items() if v["failed"]}
    return aggregates


def _write(spark: SparkSession, path: str, predictions: DataFrame, key: Sequence[str], report: InferReport,
           changed: str, metadata: dict, before: int | None) -> None:
    """The predictions commit, counted on the report from what Delta recorded."""
    try:
        commit = W.write_run(spark, path, predictions, key, report.model_version, changed, metadata, before)
    except W.WriteError as err:
        raise InferenceError(str(err)) from err
    counts = W.written_counts(commit)
    report.predictions_version = None if commit["version"] is None else int(commit["version"])
    report.rows_scored, report.rows_inserted, report.rows_updated = counts["scored"], counts["inserted"], counts["updated"]


def pinned(spark: SparkSession, lake: Lake, dataset: str, logical_date: str, model_version: str | None,
           table_version: int | None) -> tuple[str | None, int | None]:
    """The model and table version an earlier run of the interval ``logical_date`` scored with, for
    whichever of the two is not given; unchanged when the interval was never scored."""
    recorded = [(m, v) for m, v in W.scored_interval(spark, lake.table(dataset, "inference_summary"), logical_date)
                if model_version in (None, m) and not m.endswith(quantize.QUANTIZED_SUFFIX)]
    if not recorded:
        return model_version, table_version
    if len(recorded) > 1:
        raise InferenceError(f"interval {logical_date} was scored by {len(recorded)} model versions "
                             f"{[m for m, _ in recorded]}; name the one to re-run (--model-version)")
    model, version = recorded[0]
    return model, table_version if table_version is not None else version


def run_infer(spark: SparkSession, lake: Lake, config: AppConfig, logical_date: str,
              model_version: str | None = None, table_version: int | None = None,
              progress: Callable[[str], None] = lambda _m: None, incremental: bool | None = None,
              quantize_model: bool | None = None, fail_on_partition: int | None = None,
              reuse_interval: bool = False) -> InferReport:
    """Score one exact version of the clean table, MERGE predictions, write and return the summary.

    ``incremental`` / ``quantize_model`` default to the configuration's infer settings;
    ``reuse_interval``: a re-run of an interval scored before uses the model and table version it
    used then, for whichever is not given (``pinned``), so it reproduces that interval's summary;
    ``fail_on_partition`` makes that partition's map task raise mid-write (a test hook).
    """
    started = time.monotonic()
    dataset, settings = config.dataset, config.infer
    incremental = settings.incremental if incremental is None else incremental
    quantize_model = settings.quantize if quantize_model is None else quantize_model
    model_version = model_version or settings.model_version
    if reuse_interval:
        model_version, table_version = pinned(spark, lake, dataset.name, logical_date, model_version, table_version)
    card = resolve_card(spark, lake, dataset.name, model_version, config.monitoring.mlflow)
    table_path = lake.table(dataset.name, "clean")
    newest = delta_log.newest_version(table_path)
    if newest is None:
        raise InferenceError(f"{table_path}: no clean table to score; run the ingest first")
    if table_version is not None and not 0 <= table_version <= newest:
        raise InferenceError(f"{table_path}: no version {table_version} (versions 0..{newest})")
    version = table_version if table_version is not None else newest
    model = load_model(card)
    written_as = quantize.scored_version(card["model_version"], quantize_model)
    report = InferReport(written_as, table_path, version, logical_date, "incremental" if incremental else "full",
                         model.spec.kind, quantize_model)
    key = list(dataset.key)
    source = delta_io.read_version(spark, table_path, version)
    if ROW_HASH not in source.columns:
        raise InferenceError(f"{table_path}@v{version}: no {ROW_HASH} column; the ingest writes it with each row")
    label = dataset.label.column if dataset.label.column in source.columns else None
    path = lake.table(dataset.name, "predictions")
    before = delta_log.newest_version(path)
    pending = source
    if incremental and before is not None:
        pending = I.unscored(source, delta_io.read_version(spark, path, before), key, written_as,
                             ROW_HASH, SOURCE_ROW_HASH)

    progress(f"scoring {table_path}@v{version} with {written_as} ({report.mode})")
    scored = score(model, pending, key, label, settings.batch_size, quantize_model, fail_on_partition)
    predictions = S.with_lineage(scored, written_as, table_path, version, logical_date)
    metadata = {"model_version": written_as, "source_table": table_path, "source_version": version,
                "logical_date": logical_date, "mode": report.mode,
                "run": uuid.uuid4().hex}  # names this run's commit in the table's history
    _write(spark, path, predictions, key, report, W.changed_condition(model.spec.kind, label), metadata, before)

    progress("reducing: per-shard summary")
    marked = _cohorts(spark, source, card, table_path, version, key)
    features = [c for c in dict.fromkeys([*model.spec.numeric, *model.spec.categorical]) if c not in key]
    carry = [*([SPLIT] if SPLIT in source.columns else []), COHORT, *features]
    stored = delta_io.read_version(spark, path, report.predictions_version)
    # Rows whose stored prediction is of newer content than this version's (a re-run of a past
    # interval after a later ingest changed them) were not written back; score them again here.
    redo = S.with_lineage(score(model, I.unscored(source, stored, key, written_as, ROW_HASH, SOURCE_ROW_HASH), key,
                                label, settings.batch_size, quantize_model), written_as, table_path, version,
                         logical_date).persist()  # usually empty; the reduce reads it more than once
    current = I.for_source(stored.unionByName(redo, allowMissingColumns=True), marked, key, written_as,
                           ROW_HASH, SOURCE_ROW_HASH, carry)
    same_version = card.get("table_path") == table_path and card.get("table_version") == version
    aggregates = _reduce(current, label, model.spec.kind, card, settings, same_version, report)

    run_dir = Folder(lake.location(dataset.name, "inference_runs", written_as, f"{logical_date}_v{version}")).make()
    report.run_dir = run_dir.location
    rows = int(report.summary[0]["rows"]) if report.summary else 0
    if quantize_model:
        progress("comparing the int8 model with the float model")
        report.quantization = _quantization_report(source, model, label, rows, settings.quantize_sample_rows,
                                                   settings.batch_size)
    if rows:
        progress("plotting the score distribution")
        title = f"{written_as} on {dataset.name} clean v{version} ({logical_date})"
        report.plot = str(_plot(current, aggregates, label, model.spec.kind, rows, settings.plot_sample_rows,
                                run_dir.file(PLOT_FILE), title))
    W.write_summary(spark, lake.table(dataset.name, "inference_summary"),
                    {"model_version": written_as, "source_version": version, "logical_date": logical_date},
                    report.summary, report.comparison)
    redo.unpersist()
    report.seconds = round(time.monotonic() - started, 2)
    run_dir.write_text(REPORT_FILE, json.dumps(report.to_dict(), indent=2, default=str))
    return report
