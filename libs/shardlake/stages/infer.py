"""The inference stage: map (score partitions) -> MERGE predictions -> reduce (per-shard summary).

Predictions are keyed by (key, model version). Each run's predictions land in one Delta MERGE
commit, so a run that dies mid-write leaves the table as it was and the next run completes it; a
re-run updates only rows whose prediction changed, so it writes nothing twice. Incremental runs
score only the keys the model version has not scored yet.
"""
from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pandas as pd
from delta.tables import DeltaTable
from pyspark.errors import AnalysisException
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from shardlake import delta_io, plots, quantize, registry
from shardlake.config import AppConfig
from shardlake.lake import Lake
from shardlake.scoring import PREDICTION, SCORE, TabularModel
from shardlake.transforms import incremental as I
from shardlake.transforms import summary as S
from shardlake.transforms.clean import SHARD

PLOT_FILE = "score_distribution.png"
THRESHOLD = 0.5  # a binary model's decision threshold (the map stage's default)
REPORT_FILE = "report.json"
# Two scorings of the same row may differ in the last float bits (BLAS blocking depends on the
# batch a row lands in); only a larger change is a new prediction worth a rewrite.
SCORE_TOLERANCE = 1e-6


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
    quantization: dict = field(default_factory=dict)
    run_dir: str | None = None
    plot: str | None = None
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


SUMMARY_FIELDS = [
    ("scope", T.StringType()), ("rows", T.LongType()), ("mean_score", T.DoubleType()),
    ("predicted_positive_rate", T.DoubleType()), ("label_rate", T.DoubleType()), ("accuracy", T.DoubleType()),
    ("precision", T.DoubleType()), ("recall", T.DoubleType()), ("auc", T.DoubleType()),
    ("score_std", T.DoubleType()), ("score_min", T.DoubleType()), ("score_max", T.DoubleType()),
    ("label_mean", T.DoubleType()), ("rmse", T.DoubleType()), ("mae", T.DoubleType()),
]
SUMMARY_SCHEMA = T.StructType(
    [T.StructField("model_version", T.StringType(), False), T.StructField("source_version", T.LongType(), False),
     T.StructField("logical_date", T.DateType(), False)]
    + [T.StructField(n, t) for n, t in SUMMARY_FIELDS]
    + [T.StructField("drift_json", T.StringType())]
)
SUMMARY_KEY = ["model_version", "source_version", "logical_date", "scope"]


def resolve_card(spark: SparkSession, lake: Lake, dataset: str, model_version: str | None) -> dict:
    """The requested model's card, else the dataset's production model's."""
    registry_path = lake.registry()
    card = (registry.model_card(spark, registry_path, model_version) if model_version
            else registry.production_model(spark, registry_path, dataset))
    if card is None:
        wanted = f"model {model_version!r}" if model_version else f"a production model for {dataset!r}"
        raise InferenceError(f"{registry_path}: no {wanted}; train (and promote) one first, "
                             "or pass infer.model_version")
    return dict(card)


def load_model(card: Mapping) -> TabularModel:
    """The card's model from its folder, refused when the folder's spec is not the one the card recorded.

    The spec carries the feature statistics, so this guarantees inference applies the transform
    the card describes (a folder overwritten by another run would not).
    """
    model = TabularModel.load(Path(card["model_dir"]), card["model_version"])
    recorded = card.get("model_spec")
    if recorded is not None and {k: recorded.get(k) for k in model.spec.to_dict()} != model.spec.to_dict():
        raise InferenceError(f"{card['model_dir']}: the saved model spec differs from the one on the model card of "
                             f"{card['model_version']}; the folder was changed after registration")
    return model


def score(model: TabularModel, source: DataFrame, key: Sequence[str], label: str | None, batch_size: int,
          quantize: bool = False, fail_on_partition: int | None = None) -> DataFrame:
    """The map stage: the model's transform over the source, keeping key, shard and label."""
    passthrough = [*key, SHARD, *([label] if label else [])]
    return model.transform(source, passthrough, batch_size, threshold=THRESHOLD, quantize=quantize,
                           fail_on_partition=fail_on_partition)


def newest_version(path: str) -> int | None:
    """Newest version of a Delta table, or None when there is none; read from the log by delta-rs (no Spark job)."""
    from deltalake import DeltaTable as RsDeltaTable
    from deltalake.exceptions import TableNotFoundError

    try:
        return RsDeltaTable(path).version()
    except TableNotFoundError:
        return None


def find_commit(path: str, after: int | None, token: str) -> dict | None:
    """The commit after version ``after`` whose metadata carries ``token`` (another writer may have committed too).

    None when the run committed nothing: Delta skips the commit of an insert-only MERGE with
    nothing to insert (an incremental run with no new keys).
    """
    from deltalake import DeltaTable as RsDeltaTable

    table = RsDeltaTable(path)
    for entry in table.history(table.version() - (after if after is not None else -1)):
        if token in (entry.get("userMetadata") or ""):
            return entry
    return None


def _key_condition(key: Sequence[str], model_version: str) -> Column:
    """MERGE match: the model version as a literal (prunes the target to its partition), then the key null-safely."""
    condition = F.col("t.model_version") == F.lit(model_version)
    for column in key:
        condition = condition & F.col(f"t.{column}").eqNullSafe(F.col(f"s.{column}"))
    return condition


def changed_condition(kind: str, label: str | None) -> str:
    """SQL (on t./s.) true when a matched prediction differs enough to be rewritten (see SCORE_TOLERANCE)."""
    score_moved = (f"(NOT (t.{SCORE} <=> s.{SCORE}) AND (t.{SCORE} IS NULL OR s.{SCORE} IS NULL "
                   f"OR abs(t.{SCORE} - s.{SCORE}) > {SCORE_TOLERANCE} * greatest(1.0, abs(t.{SCORE}))))")
    parts = [score_moved]
    if kind == "binary":
        parts.append(f"NOT (t.{PREDICTION} <=> s.{PREDICTION})")
    if label:
        parts.append(f"NOT (t.`{label}` <=> s.`{label}`)")
    return " OR ".join(parts)


def write_predictions(spark: SparkSession, path: str, predictions: DataFrame, key: Sequence[str], model_version: str,
                      changed_when: str | None, metadata: Mapping[str, object]) -> None:
    """MERGE predictions in one commit: insert new keys, update rows where ``changed_when`` (None: insert only).

    ``metadata`` goes on the commit. The first write creates the table with its rows in one commit
    (refused if another run created it meanwhile; then it merges). Delta re-reads a MERGE source it
    does not materialise; the source here is the map stage, so it is materialised once instead of
    being scored twice.
    """
    if newest_version(path) is None:
        try:
            with delta_io.commit_metadata(spark, metadata):
                predictions.write.format("delta").partitionBy("model_version").mode("errorifexists").save(path)
            return
        except AnalysisException:
            if newest_version(path) is None:  # not a lost race to create the table: a real failure
                raise
    merge = DeltaTable.forPath(spark, path).alias("t").merge(predictions.alias("s"), _key_condition(key, model_version))
    if changed_when is not None:
        merge = merge.whenMatchedUpdateAll(condition=changed_when)
    with delta_io.commit_metadata(spark, metadata), \
            delta_io.session_conf(spark, {"spark.databricks.delta.merge.materializeSource": "all"}):
        merge.whenNotMatchedInsertAll().execute()


def _add_summary_columns(spark: SparkSession, path: str) -> None:
    """Add the columns newer code summarises to a summary table written by older code."""
    have = set(DeltaTable.forPath(spark, path).toDF().columns)
    added = [f for f in SUMMARY_SCHEMA.fields if f.name not in have]
    if added:
        columns = ", ".join(f"`{f.name}` {f.dataType.simpleString()}" for f in added)
        spark.sql(f"ALTER TABLE delta.`{path}` ADD COLUMNS ({columns})")


def summary_frame(spark: SparkSession, report: InferReport) -> DataFrame:
    """The report's summary rows as the summary table's rows (the overall row carries the test comparison)."""
    import datetime as dt

    rows = [(report.model_version, report.source_version, dt.date.fromisoformat(report.logical_date),
             *[r.get(n) for n, _ in SUMMARY_FIELDS],
             json.dumps(report.comparison) if r["scope"] == "overall" else None)
            for r in report.summary]
    return spark.createDataFrame(rows, SUMMARY_SCHEMA)


def _write_summary(spark: SparkSession, path: str, report: InferReport) -> None:
    """Replace this run's summary rows (model version, source version, logical date) in one commit.

    A re-run of the same run replaces its rows rather than adding more; cheaper than a MERGE.
    """
    frame = summary_frame(spark, report)
    if newest_version(path) is None:
        frame.write.format("delta").mode("append").save(path)  # creates the table: one commit
        return
    _add_summary_columns(spark, path)
    run = (f"model_version = {delta_io.sql_string(report.model_version)} "
           f"AND source_version = {int(report.source_version)} "
           f"AND logical_date = DATE {delta_io.sql_string(report.logical_date)}")
    frame.write.format("delta").mode("overwrite").option("replaceWhere", run).save(path)


def score_series(sample: pd.DataFrame, label: str | None, kind: str) -> dict[str, pd.Series]:
    """The plot's series: scores by label value (binary), or predictions beside labels (regression)."""
    if label is None:
        return {"all rows": sample[SCORE]}
    if kind == "binary":
        labelled = sample[sample[label].notna()]
        return {f"{label}={int(v)}": labelled.loc[labelled[label] == v, SCORE]
                for v in sorted(labelled[label].unique())}
    return {"prediction": sample[SCORE], f"actual {label}": sample[label].dropna()}


def _plot(current: DataFrame, aggregates: list[dict], label: str | None, kind: str, rows: int, limit: int,
          path: Path, title: str) -> Path:
    """Score distribution PNG: binary from the reduce stage's histogram (every row, no extra pass),
    regression from a seeded sample of at most ``limit`` rows."""
    if kind == "binary":
        edges, series = S.label_histogram(aggregates, label)
        return plots.binned_histogram(edges, series, path, title, threshold=THRESHOLD)
    columns = [SCORE, *([label] if label else [])]
    picked = current.select(*[F.col(c) for c in columns])
    if rows > limit:
        picked = picked.sample(fraction=min(1.0, 1.2 * limit / rows), seed=7).limit(limit)
    return plots.score_histogram(score_series(picked.toPandas(), label, kind), path, title)


def _quantization_report(source: DataFrame, model: TabularModel, label: str | None, rows: int, limit: int,
                         batch_size: int) -> dict:
    """Float against int8 on a seeded sample of the source: metric change and speed change (one thread)."""
    features = [*model.spec.numeric, *model.spec.categorical, *([label] if label else [])]
    picked = source.select(*[F.col(c) for c in dict.fromkeys(features)])
    if rows > limit:
        picked = picked.sample(fraction=min(1.0, 1.2 * limit / rows), seed=11).limit(limit)
    return quantize.compare(model.spec, model.weights, picked.toPandas(), label, batch_size, threads=1)


def _short(err: BaseException) -> str:
    """The first lines of a Spark/Python error, enough to say what failed."""
    return " ".join(str(err).split())[:600]


def _write_run(spark: SparkSession, path: str, predictions: DataFrame, key: Sequence[str], model_version: str,
               changed_when: str | None, metadata: dict, before: int | None) -> dict:
    """Write the run's predictions (the map stage runs inside this write); return its commit's history entry.

    On failure, InferenceError says what state the table is in: as it was, unless another writer
    committed meanwhile.
    """
    try:
        write_predictions(spark, path, predictions, key, model_version, changed_when, metadata)
    except Exception as err:  # Spark wraps the map task's error; say what state the table is in
        now = newest_version(path)
        was = "no table" if before is None else f"v{before}"
        state = f"left as it was ({was})" if now == before else f"now at v{now} (was {was})"
        raise InferenceError(f"scoring/writing predictions failed; {path} is {state}; run again to complete it: "
                             f"{_short(err)}") from err
    return find_commit(path, before, metadata["run"]) or {"version": newest_version(path), "operationMetrics": {}}


def _count_written(report: InferReport, commit: Mapping) -> None:
    """Rows scored, inserted and updated from the commit's metrics (a first WRITE reports only its output rows)."""
    metrics = commit.get("operationMetrics") or {}
    report.predictions_version = int(commit["version"])
    report.rows_scored = int(metrics.get("numSourceRows", metrics.get("numOutputRows", 0)))
    report.rows_inserted = int(metrics.get("numTargetRowsInserted", metrics.get("numOutputRows", 0)))
    report.rows_updated = int(metrics.get("numTargetRowsUpdated", 0))


def _reduce(current: DataFrame, label: str | None, kind: str, card: Mapping, tolerance: float,
            report: InferReport) -> list[dict]:
    """The reduce stage: per-shard aggregates -> summary, and the comparison with the card's test metrics."""
    aggregates = [r.asDict() for r in S.shard_aggregates(current, label, kind).collect()]
    report.summary = S.summarize(aggregates, kind, labelled=label is not None)
    overall = next((r for r in report.summary if r["scope"] == "overall"), {})
    report.comparison = S.compare_with_test(overall, card.get("test_metrics", {}), tolerance, kind)
    report.drift = {k: v for k, v in report.comparison.items() if v["drifted"]}
    return aggregates


def run_infer(spark: SparkSession, lake: Lake, config: AppConfig, logical_date: str,
              model_version: str | None = None, table_version: int | None = None,
              progress: Callable[[str], None] = lambda _m: None, incremental: bool | None = None,
              quantize_model: bool | None = None, fail_on_partition: int | None = None) -> InferReport:
    """Score one exact version of the clean table, MERGE predictions, write and return the summary.

    ``incremental`` / ``quantize_model`` default to the configuration's infer settings;
    ``fail_on_partition`` makes that partition's map task raise mid-write (a test hook).
    """
    started = time.monotonic()
    dataset, settings = config.dataset, config.infer
    incremental = settings.incremental if incremental is None else incremental
    quantize_model = settings.quantize if quantize_model is None else quantize_model
    card = resolve_card(spark, lake, dataset.name, model_version or settings.model_version)
    table_path = lake.table(dataset.name, "clean")
    newest = newest_version(table_path)
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
    label = dataset.label.column if dataset.label.column in source.columns else None
    path = lake.table(dataset.name, "predictions")
    before = newest_version(path)
    pending = source
    if incremental and before is not None:
        pending = I.unscored(source, delta_io.read_version(spark, path, before), key, written_as)

    progress(f"scoring {table_path}@v{version} with {written_as} ({report.mode})")
    scored = score(model, pending, key, label, settings.batch_size, quantize_model, fail_on_partition)
    predictions = S.with_lineage(scored, written_as, table_path, version, logical_date)
    metadata = {"model_version": written_as, "source_table": table_path, "source_version": version,
                "logical_date": logical_date, "mode": report.mode,
                "run": uuid.uuid4().hex}  # names this run's commit in the table's history
    changed = None if incremental else changed_condition(model.spec.kind, label)
    _count_written(report, _write_run(spark, path, predictions, key, written_as, changed, metadata, before))

    progress("reducing: per-shard summary")
    current = I.for_source(delta_io.read_version(spark, path, report.predictions_version), source, key, written_as)
    aggregates = _reduce(current, label, model.spec.kind, card, settings.drift_tolerance, report)

    run_dir = lake.path(dataset.name, "inference_runs", written_as, f"{logical_date}_v{version}")
    run_dir.mkdir(parents=True, exist_ok=True)
    report.run_dir = str(run_dir)
    rows = int(report.summary[0]["rows"]) if report.summary else 0
    if quantize_model:
        progress("comparing the int8 model with the float model")
        report.quantization = _quantization_report(source, model, label, rows, settings.quantize_sample_rows,
                                                   settings.batch_size)
    if rows:
        progress("plotting the score distribution")
        title = f"{written_as} on {dataset.name} clean v{version} ({logical_date})"
        report.plot = str(_plot(current, aggregates, label, model.spec.kind, rows, settings.plot_sample_rows,
                                run_dir / PLOT_FILE, title))
    _write_summary(spark, lake.table(dataset.name, "inference_summary"), report)
    report.seconds = round(time.monotonic() - started, 2)
    (run_dir / REPORT_FILE).write_text(json.dumps(report.to_dict(), indent=2, default=str))
    return report
