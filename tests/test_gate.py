"""The promotion gate: champion against challenger on the same held-out rows, both figures on the registry row.

Two real models (random weights) and a small clean table whose label is model 'good''s own
decision, so 'good' ranks the test rows almost perfectly and 'poor' does not; the oracle is
the share of (positive, negative) pairs that in-process scores of the same rows order rightly.
"""
from __future__ import annotations

import numpy as np
import pytest
from pyspark.sql import functions as F

import infer_data as D
from shardlake import delta_io, registry
from shardlake.config import TrainSettings
from shardlake.lake import Lake
from shardlake.stages.gate import decide, run_gate

SETTINGS = TrainSettings(promote_threshold=0.0, promote_margin=0.0)  # only the comparison decides


def pairwise_auc(labels, scores) -> float:
    """AUC by its definition: P(score of a positive > score of a negative), ties counting half."""
    labels, scores = np.asarray(labels), np.asarray(scores)
    positive, negative = scores[labels == 1][:, None], scores[labels == 0][None, :]
    return float(np.mean((positive > negative) + 0.5 * (positive == negative)))


@pytest.mark.parametrize(("candidate", "champion", "higher", "expected"), [
    (0.80, 0.70, True, True),   # better AUC
    (0.70, 0.70, True, True),   # as good, margin 0
    (0.69, 0.70, True, False),  # worse AUC
    (9.0, 10.0, False, True),   # lower RMSE
    (11.0, 10.0, False, False),  # higher RMSE
])
def test_a_candidate_must_be_at_least_as_good_as_the_champion(candidate, champion, higher, expected):
    threshold = 0.5 if higher else 20.0
    assert decide(candidate, champion, threshold, 0.0, higher)[0] is expected


def test_the_margin_is_required_on_top_of_the_champion():
    assert decide(0.72, 0.70, 0.5, 0.03, True) == (
        False, "0.72 is not better than the production model's 0.7 by the margin 0.03")


def test_the_absolute_floor_holds_even_against_a_worse_champion():
    assert decide(0.58, 0.52, 0.6, 0.0, True)[0] is False


def test_without_a_champion_only_the_floor_applies():
    assert (decide(0.61, None, 0.6, 0.0, True)[0], decide(13.0, None, 12.0, 0.0, False)[0]) == (True, False)


def test_a_metric_that_could_not_be_computed_is_never_promoted():
    assert decide(float("nan"), 0.7, 0.0, 0.0, True)[0] is False


@pytest.fixture()
def models(spark, tmp_path):
    """A lake with models 'good' (production) and 'poor' (candidate) and a clean table v0 with a test split."""
    lake = Lake.at(tmp_path / "lake")
    data = D.rows(400, seed=9)
    good_folder = D.save(lake, "gate", "good", seed=3)
    data["delayed"] = (D.in_process_scores(good_folder, data) >= np.median(D.in_process_scores(good_folder, data)))
    data["delayed"] = data["delayed"].astype(np.int32)
    test_split = F.when(F.col("flight") % 4 == 0, F.lit("test")).otherwise(F.lit("train"))
    D.frame(spark, data).withColumn("split", test_split).write.format("delta").save(lake.table("gate", "clean"))
    for name, seed in (("good", 3), ("poor", 4)):
        D.register_model(spark, lake, "gate", name, seed=seed)
    registry.promote(spark, lake.registry(), "good")
    test = data[data["flight"] % 4 == 0]
    auc = {name: pairwise_auc(test["delayed"], D.in_process_scores(lake.model_dir("gate", name), test))
           for name in ("good", "poor")}
    return {"lake": lake, "auc": auc, "test_rows": len(test)}


def _row(spark, lake: Lake, version: str):
    return delta_io.read_version(spark, lake.registry()).where(F.col("model_version") == version).first()


def test_a_candidate_worse_than_production_on_the_same_rows_is_refused(spark, models):
    decision = run_gate(spark, models["lake"], D.config(models["lake"], "gate").dataset, SETTINGS, "poor")
    assert (decision.promoted, registry.production_model(spark, models["lake"].registry(), "gate")["model_version"]) \
        == (False, "good")


def test_the_gate_records_both_models_figures_on_the_candidates_row(spark, models):
    run_gate(spark, models["lake"], D.config(models["lake"], "gate").dataset, SETTINGS, "poor")
    row = _row(spark, models["lake"], "poor")
    assert (row["gate_table_version"], row["champion_version"], row["stage"]) == (0, "good", "candidate")
    assert (row["gate_metric"], row["champion_metric"]) == (
        pytest.approx(models["auc"]["poor"], abs=0.01), pytest.approx(models["auc"]["good"], abs=0.01))


def test_a_candidate_better_than_production_replaces_it(spark, models):
    lake = models["lake"]
    registry.promote(spark, lake.registry(), "poor")  # the worse model is production now
    decision = run_gate(spark, lake, D.config(lake, "gate").dataset, SETTINGS, "good")
    assert (decision.promoted, decision.champion_version, _row(spark, lake, "poor")["stage"],
            _row(spark, lake, "good")["stage"]) == (True, "poor", "archived", "production")


def test_the_gate_judges_on_the_candidates_table_version_after_a_later_ingest(spark, models):
    lake = models["lake"]
    later = D.frame(spark, D.rows(40, start=9000, seed=9)).withColumn("split", F.lit("test"))
    later.write.format("delta").mode("append").save(lake.table("gate", "clean"))
    decision = run_gate(spark, lake, D.config(lake, "gate").dataset, SETTINGS, "poor")
    assert (decision.table_version, decision.test_rows) == (0, models["test_rows"])


def test_gating_an_unknown_model_is_refused(spark, models):
    with pytest.raises(registry.PromotionError, match="not in the registry"):
        run_gate(spark, models["lake"], D.config(models["lake"], "gate").dataset, SETTINGS, "nope")



def test_a_rerun_of_a_past_gate_reports_its_decision_and_changes_nothing(spark, models):
    """Issue 12: re-running an old interval's gate judged its candidate again against today's production model."""
    lake = models["lake"]
    registry.promote(spark, lake.registry(), "poor")
    dataset = D.config(lake, "gate").dataset
    first = run_gate(spark, lake, dataset, SETTINGS, "good")  # 'good' replaces 'poor'
    registry.promote(spark, lake.registry(), "poor")  # later, another promotion puts 'poor' back
    before = delta_io.read_version(spark, lake.registry()).collect()
    again = run_gate(spark, lake, dataset, SETTINGS, "good")
    assert (again.promoted, again.serving_version, again.champion_version, again.candidate_metric) == (
        True, "good", "poor", first.candidate_metric)
    assert sorted(map(repr, delta_io.read_version(spark, lake.registry()).collect())) == sorted(map(repr, before))


def test_a_refused_candidate_serves_the_champion(spark, models):
    decision = run_gate(spark, models["lake"], D.config(models["lake"], "gate").dataset, SETTINGS, "poor")
    assert (decision.promoted, decision.serving_version, decision.to_dict()["serving_version"]) == (
        False, "good", "good")


def test_judging_again_replaces_the_recorded_decision(spark, models):
    lake = models["lake"]
    dataset = D.config(lake, "gate").dataset
    run_gate(spark, lake, dataset, SETTINGS, "poor")
    lenient = TrainSettings(promote_threshold=0.0, promote_margin=-1.0)  # anything passes
    assert run_gate(spark, lake, dataset, lenient, "poor").promoted is False  # the recorded refusal
    assert run_gate(spark, lake, dataset, lenient, "poor", judge_again=True).promoted is True
