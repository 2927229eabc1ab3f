"""The promotion gate: champion against challenger on the same held-out rows, then one registry commit.

A candidate replaces the production model only when, scored on the test split of the table
version the candidate was trained on, it is at least as good as the production model scored on
those same rows, by ``train.promote_margin``; and it must also reach the absolute floor
``train.promote_threshold``. The validation metric is not used: it chose the candidate's best
epoch, so it flatters the candidate. Both figures are recorded on the candidate's registry row,
promoted or not.

The test split is a pure function of the key (``clean.add_shard_and_split``), and a layout
change is refused by the ingest, so no model in the registry has trained on these rows.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from shardlake import delta_io, registry
from shardlake.config import DatasetSpec, MlflowSettings, TrainSettings
from shardlake.lake import Lake
from shardlake.ops import tracking
from shardlake.scoring import TabularModel, load_registered
from shardlake.training.metrics import primary_metric
from shardlake.transforms import summary as S
from shardlake.transforms.clean import SHARD, SPLIT


@dataclass
class GateDecision:
    model_version: str
    metric_name: str
    higher_is_better: bool
    table_path: str
    table_version: int
    test_rows: int | None  # None: a decision recorded by an earlier run, not judged again
    candidate_metric: float
    champion_version: str | None
    champion_metric: float | None
    threshold: float
    margin: float
    promoted: bool
    reason: str

    @property
    def serving_version(self) -> str | None:
        """The production model after this decision: what inference of the gate's interval scores with."""
        return self.model_version if self.promoted else self.champion_version

    def to_dict(self) -> dict:
        return {**asdict(self), "serving_version": self.serving_version}

    def figures(self) -> dict[str, object]:
        """What the registry row keeps of this decision (registry.GATE_COLUMNS)."""
        return {"gate_table_version": self.table_version, "gate_metric": self.candidate_metric,
                "champion_version": self.champion_version, "champion_metric": self.champion_metric,
                "gate_decision": "promoted" if self.promoted else f"refused: {self.reason}"}


def decide(candidate: float, champion: float | None, threshold: float, margin: float,
           higher_is_better: bool) -> tuple[bool, str]:
    """Whether a candidate with metric ``candidate`` may replace a champion with ``champion`` (None: none yet).

    Two conditions: the absolute floor (``threshold``: at least it for a higher-is-better
    metric, at most it otherwise) and, when there is a champion, beating it by ``margin``.
    A metric that could not be computed (NaN: an empty test split, one class only) never passes.
    """
    sign = 1.0 if higher_is_better else -1.0
    if candidate is None or math.isnan(candidate):
        return False, "the candidate's metric on the test rows could not be computed"
    if sign * (candidate - threshold) < 0:
        return False, f"{candidate:.6g} does not meet the promotion threshold {threshold:g}"
    if champion is None or math.isnan(champion):
        return True, "no comparable production model" if champion is not None else "no production model yet"
    if sign * (candidate - champion) < margin:
        return False, (f"{candidate:.6g} is not better than the production model's {champion:.6g} "
                       f"by the margin {margin:g}")
    return True, f"{candidate:.6g} against the production model's {champion:.6g}"


def held_out_metric(model: TabularModel, rows: DataFrame, label: str, batch_size: int) -> float:
    """``model``'s primary metric on ``rows`` by the reduce stage's aggregates (the same arithmetic inference
    reports, so the figures compare with the summary's)."""
    scored = model.transform(rows, [SHARD, label], batch_size)
    aggregates = [r.asDict() for r in S.shard_aggregates(scored, label, model.spec.kind).collect()]
    overall = S.summarize(aggregates, model.spec.kind, labelled=True)[0] if aggregates else {}
    metric, _ = primary_metric(model.spec.kind)
    return float(overall.get(metric, float("nan")))


def held_out_rows(spark: SparkSession, card: Mapping, label: str) -> DataFrame:
    """The labelled test split of the table version the candidate was trained on."""
    version = delta_io.read_version(spark, card["table_path"], int(card["table_version"]))
    return version.where((F.col(SPLIT) == F.lit("test")) & F.col(label).isNotNull())


def recorded_decision(card: Mapping, recorded: Mapping, settings: TrainSettings) -> GateDecision:
    """The decision an earlier gate run recorded on the candidate's row, as that run returned it."""
    metric, higher = primary_metric(card["model_spec"]["kind"])
    verdict = str(recorded["gate_decision"])
    promoted = verdict == "promoted"
    return GateDecision(card["model_version"], metric, higher, card["table_path"],
                        int(recorded["gate_table_version"]), None, recorded["gate_metric"],
                        recorded["champion_version"], recorded["champion_metric"], settings.promote_threshold,
                        settings.promote_margin, promoted,
                        "decided before: " + ("promoted" if promoted else verdict.removeprefix("refused: ")))


def run_gate(spark: SparkSession, lake: Lake, dataset: DatasetSpec, settings: TrainSettings, model_version: str,
             batch_size: int = 8192, judge_again: bool = False,
             mlflow: MlflowSettings | None = None) -> GateDecision:
    """Judge ``model_version`` against the dataset's production model and record the decision in the registry.

    A candidate a gate already decided on is not judged again (unless ``judge_again``): the recorded
    decision is returned and nothing changes, so re-running a past interval's gate neither promotes
    an older model over a newer one nor serves another model than that interval did.
    Then MLflow's alias (``mlflow``, default: the embedded store) is pointed at the registry's
    production model, in the same step (a run after a failed move repairs it).
    Raises ``registry.PromotionError`` for a model that is not registered, ``tracking.TrackingError``
    when the alias could not be moved (the registry's decision stands).
    """
    decision = _judge(spark, lake, dataset, settings, model_version, batch_size, judge_again)
    production = registry.production_model(spark, lake.registry(), dataset.name)
    tracking.point_alias(mlflow or MlflowSettings(), lake, dataset.name,
                         production["model_version"] if production else None)
    return decision


def _judge(spark: SparkSession, lake: Lake, dataset: DatasetSpec, settings: TrainSettings, model_version: str,
           batch_size: int, judge_again: bool) -> GateDecision:
    path = lake.registry()
    card = registry.model_card(spark, path, model_version)
    if card is None:
        raise registry.PromotionError(f"model {model_version!r} is not in the registry {path}")
    recorded = None if judge_again else registry.gate_record(spark, path, model_version)
    if recorded is not None:
        return recorded_decision(card, recorded, settings)
    metric, higher = primary_metric(card["model_spec"]["kind"])
    champion = registry.production_model(spark, path, dataset.name)
    already = champion is not None and champion["model_version"] == model_version
    rows = held_out_rows(spark, card, dataset.label.column).cache()
    try:
        count = rows.count()
        candidate_metric = held_out_metric(load_registered(card), rows, dataset.label.column, batch_size)
        champion_metric = None
        if champion is not None and not already:
            champion_metric = held_out_metric(load_registered(champion), rows, dataset.label.column, batch_size)
    finally:
        rows.unpersist()
    if already:
        ok, reason = True, "already the production model"
    else:
        ok, reason = decide(candidate_metric, champion_metric, settings.promote_threshold, settings.promote_margin,
                            higher)
    champion_version = champion["model_version"] if champion is not None else None
    decision = GateDecision(model_version, metric, higher, card["table_path"], int(card["table_version"]), count,
                            candidate_metric, champion_version, champion_metric, settings.promote_threshold,
                            settings.promote_margin, ok, reason)
    if already:
        return decision  # a re-run of the gate changes nothing
    if ok:
        registry.promote(spark, path, model_version, decision.figures(), champion_version)
    else:
        registry.record_refusal(spark, path, model_version, decision.figures())
    return decision
