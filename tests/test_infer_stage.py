"""run_infer end to end on tiny Delta tables: real Spark, real Delta, a registered model, no mocks.

The module's lake (a registry holding model 'mb') and its one full run are shared only by tests
that read them. A test that writes (a re-run, an incremental or failed run, another model) gets
its own lake from a function-scoped fixture, so no test depends on what another one did.
"""
from __future__ import annotations

import datetime as dt
import json

import numpy as np
import pandas as pd
import pytest
from pyspark.sql import functions as F
from pyspark.testing import assertDataFrameEqual

import infer_data as D
from shardlake import delta_io
from shardlake.lake import Lake
from shardlake.scoring import PREDICTION, SCORE, TabularModel
from shardlake.stages.infer import PLOT_FILE, REPORT_FILE, InferenceError, load_model, run_infer
from shardlake.stages.reference import training_reference

BINARY_TEST_METRICS = {"auc": 0.95, "accuracy": 0.5}  # AUC far above what random weights reach: drift


def _lake_with_model(spark, root) -> Lake:
    """A lake whose registry holds a binary model 'mb'."""
    lake = Lake.at(root / "lake")
    D.register_model(spark, lake, "flights", "mb", "binary", BINARY_TEST_METRICS)
    return lake


@pytest.fixture(scope="module")
def lake(spark, tmp_path_factory) -> Lake:
    """The module's lake, for tests that only read it (and the read-only ``full_run``)."""
    return _lake_with_model(spark, tmp_path_factory.mktemp("infer"))


@pytest.fixture()
def own_lake(spark, tmp_path) -> Lake:
    """A lake of the test's own, for a test that writes to it."""
    return _lake_with_model(spark, tmp_path)


def _predictions(spark, lake: Lake, dataset: str, version: int | None = None):
    return delta_io.read_version(spark, lake.table(dataset, "predictions"), version)


def _expected(spark, data, folder, model_version: str, source_version: int, logical_date: str, lake: Lake,
              dataset: str):
    """What the predictions table should hold for ``data``: in-process scores plus the lineage columns."""
    scores = D.in_process_scores(folder, data)
    expected = data[[*D.KEY, "shard", "_row_hash", "delayed"]].copy()
    expected[PREDICTION] = (scores >= 0.5).astype(np.int32)
    expected[SCORE] = scores
    return (spark.createDataFrame(expected)
            .select(*D.KEY, "shard", F.col("_row_hash").alias("source_row_hash"), F.col("delayed").cast("int"),
                    F.col(PREDICTION).cast("int"), SCORE)
            .withColumns({"model_version": F.lit(model_version), "source_table": F.lit(lake.table(dataset, "clean")),
                          "source_version": F.lit(source_version).cast("long"),
                          "logical_date": F.to_date(F.lit(logical_date))}))


def _full_run(spark, lake: Lake, dataset: str) -> dict:
    """One full run of 'mb' over a 160-row clean table (40 rows per shard) on 2024-01-01."""
    data = D.rows(160, seed=2)
    D.write_clean(spark, lake, dataset, data)
    report = run_infer(spark, lake, D.config(lake, dataset), "2024-01-01", model_version="mb")
    return {"data": data, "report": report}


@pytest.fixture(scope="module")
def full_run(spark, lake):
    """Dataset 'full' in the module's lake, scored once; the tests using it only read it."""
    return _full_run(spark, lake, "full")


def test_predictions_equal_in_process_scoring_of_the_same_rows(spark, lake, full_run):
    expected = _expected(spark, full_run["data"], lake.model_dir("flights", "mb"), "mb", 0, "2024-01-01", lake, "full")
    assertDataFrameEqual(_predictions(spark, lake, "full"), expected, rtol=1e-6)


def test_report_counts_the_rows_scored_and_inserted(full_run):
    report = full_run["report"]
    assert (report.rows_scored, report.rows_inserted, report.rows_updated) == (160, 160, 0)
    assert report.summary[0]["scope"] == "overall" and report.summary[0]["rows"] == 160


def test_drift_of_rows_new_to_the_model_beyond_tolerance_is_flagged_and_stored(spark, lake, full_run):
    # The card's model was trained on another table ('flights'): every row of 'full' is new to it.
    report = full_run["report"]
    assert "auc" in report.drift and report.drift["auc"]["at_test"] == BINARY_TEST_METRICS["auc"]
    stored = (delta_io.read_version(spark, lake.table("full", "inference_summary"))
              .where(F.col("scope") == "overall").first())
    assert json.loads(stored["drift_json"])["new_rows"]["auc"]["drifted"] is True


def test_summary_table_holds_one_row_per_shard_and_overall(spark, lake, full_run):
    summary = delta_io.read_version(spark, lake.table("full", "inference_summary"))
    lineage = ("mb", 0, dt.date(2024, 1, 1))
    expected = spark.createDataFrame(
        [(*lineage, "overall", 160), (*lineage, "cohort=new", 160), *[(*lineage, f"shard={s}", 40) for s in range(4)]],
        "model_version string, source_version long, logical_date date, scope string, rows long")
    # Every row, not a dict by scope: a scope written twice fails here.
    assertDataFrameEqual(summary.select("model_version", "source_version", "logical_date", "scope", "rows"),
                         expected)


def test_score_distribution_plot_and_report_are_written_next_to_the_run(full_run):
    report = full_run["report"]
    assert report.plot.endswith(PLOT_FILE)
    with open(report.plot, "rb") as png:
        assert png.read(8) == b"\x89PNG\r\n\x1a\n"
    saved = json.loads(open(f"{report.run_dir}/{REPORT_FILE}").read())
    assert saved["predictions_version"] == report.predictions_version


def test_rerun_writes_nothing_twice(spark, own_lake):
    _full_run(spark, own_lake, "rerun")
    before = _predictions(spark, own_lake, "rerun").collect()
    assert len(before) == 160
    report = run_infer(spark, own_lake, D.config(own_lake, "rerun"), "2024-01-02", model_version="mb")
    assert (report.rows_scored, report.rows_inserted, report.rows_updated) == (160, 0, 0)
    # Full content, the first run's logical date included: nothing was rewritten.
    assertDataFrameEqual(_predictions(spark, own_lake, "rerun"), before)


def _scored_then_grown(spark, lake: Lake, dataset: str, first, new, **write) -> tuple[list, int]:
    """v0 = ``first``, scored by a full run on 2024-01-01; then ``new`` appended as v1.

    Returns the predictions after the first run and the clean table's new version.
    """
    D.write_clean(spark, lake, dataset, first)
    run_infer(spark, lake, D.config(lake, dataset), "2024-01-01", model_version="mb")
    before = _predictions(spark, lake, dataset).collect()
    return before, D.write_clean(spark, lake, dataset, new, **write)


@pytest.fixture()
def incremental_run(spark, own_lake):
    """Dataset 'incr': a full run on 100 rows (v0), 30 new keys appended (v1), then an incremental run."""
    new = D.rows(30, start=5000, seed=3)
    old_rows, version = _scored_then_grown(spark, own_lake, "incr", D.rows(100, seed=3), new)
    report = run_infer(spark, own_lake, D.config(own_lake, "incr"), "2024-01-02", model_version="mb",
                       incremental=True)
    return {"lake": own_lake, "old_rows": old_rows, "new": new, "version": version, "report": report}


def test_incremental_run_scores_only_new_keys(spark, incremental_run):
    lake, report = incremental_run["lake"], incremental_run["report"]
    assert (report.mode, report.rows_scored, report.rows_inserted, report.rows_updated) == ("incremental", 30, 30, 0)
    after = _predictions(spark, lake, "incr")
    assert len(incremental_run["old_rows"]) == 100
    assertDataFrameEqual(after.where(F.col("logical_date") == "2024-01-01"), incremental_run["old_rows"])
    expected_new = _expected(spark, incremental_run["new"], lake.model_dir("flights", "mb"), "mb",
                             incremental_run["version"], "2024-01-02", lake, "incr")
    assertDataFrameEqual(after.where(F.col("logical_date") == "2024-01-02"), expected_new, rtol=1e-6)
    assert after.count() == 130  # nothing else: no third logical date, no duplicate
    assert report.summary[0]["rows"] == 130  # the summary covers the whole table version


def test_incremental_run_with_no_new_keys_writes_nothing(spark, incremental_run):
    lake = incremental_run["lake"]
    before = _predictions(spark, lake, "incr").collect()
    assert len(before) == 130
    report = run_infer(spark, lake, D.config(lake, "incr"), "2024-01-03", model_version="mb", incremental=True)
    assert (report.rows_scored, report.rows_inserted) == (0, 0)
    assert report.predictions_version == incremental_run["report"].predictions_version
    assertDataFrameEqual(_predictions(spark, lake, "incr"), before)


@pytest.fixture()
def updated_run(spark, own_lake):
    """Dataset 'upd': a full run on 60 rows (v0); 12 of them changed in place by a MERGE (v1); an incremental run."""
    first = D.rows(60, seed=8)
    D.write_clean(spark, own_lake, "upd", first)
    run_infer(spark, own_lake, D.config(own_lake, "upd"), "2024-01-01", model_version="mb")
    changed = first.iloc[::5].copy()
    changed["distance"] = changed["distance"].fillna(1.0) + 400.0
    changed["delayed"] = 1 - changed["delayed"]
    changed = D.with_hash(changed)
    version = D.update_clean(spark, own_lake, "upd", changed)
    report = run_infer(spark, own_lake, D.config(own_lake, "upd"), "2024-01-02", model_version="mb",
                       incremental=True)
    unchanged = first.drop(index=changed.index)
    return {"lake": own_lake, "changed": changed, "unchanged": unchanged, "version": version, "report": report}


def test_incremental_run_rescores_rows_changed_in_place(updated_run):
    report = updated_run["report"]
    assert (report.rows_scored, report.rows_inserted, report.rows_updated) == (12, 0, 12)


def test_incremental_run_replaces_the_predictions_of_changed_rows_only(spark, updated_run):
    lake, folder = updated_run["lake"], updated_run["lake"].model_dir("flights", "mb")
    expected = (_expected(spark, updated_run["unchanged"], folder, "mb", 0, "2024-01-01", lake, "upd")
                .unionByName(_expected(spark, updated_run["changed"], folder, "mb", updated_run["version"],
                                       "2024-01-02", lake, "upd")))
    assertDataFrameEqual(_predictions(spark, lake, "upd"), expected, rtol=1e-6)


def test_summary_after_an_in_place_update_counts_the_new_labels(updated_run):
    rows = pd.concat([updated_run["unchanged"], updated_run["changed"]])
    assert updated_run["report"].summary[0]["label_rate"] == pytest.approx(rows["delayed"].mean())


@pytest.fixture()
def failed_run(spark, own_lake):
    """Dataset 'fail': a complete run on v0, then new rows (v1) and a run whose map task raises mid-write."""
    first, new = D.rows(80, seed=4), D.rows(60, start=7000, seed=4)
    before, version = _scored_then_grown(spark, own_lake, "fail", first, new, partitions=2)
    before_version = delta_io.latest_version(spark, own_lake.table("fail", "predictions"))
    with pytest.raises(InferenceError) as error:
        run_infer(spark, own_lake, D.config(own_lake, "fail"), "2024-01-02", model_version="mb", fail_on_partition=1)
    return {"lake": own_lake, "before": before, "before_version": before_version, "error": error.value,
            "first": first, "new": new, "version": version}


def test_failure_inside_the_map_stage_leaves_predictions_unchanged(spark, failed_run):
    lake = failed_run["lake"]
    assert "InjectedFailure" in str(failed_run["error"]) and "left as it was" in str(failed_run["error"])
    assert delta_io.latest_version(spark, lake.table("fail", "predictions")) == failed_run["before_version"]
    assert len(failed_run["before"]) == 80
    assertDataFrameEqual(_predictions(spark, lake, "fail"), failed_run["before"])


def test_rerun_after_a_failure_completes_the_table(spark, failed_run):
    lake = failed_run["lake"]
    report = run_infer(spark, lake, D.config(lake, "fail"), "2024-01-02", model_version="mb")
    assert (report.rows_inserted, report.rows_updated) == (60, 0)
    folder = lake.model_dir("flights", "mb")
    expected = (_expected(spark, failed_run["first"], folder, "mb", 0, "2024-01-01", lake, "fail")
                .unionByName(_expected(spark, failed_run["new"], folder, "mb", failed_run["version"], "2024-01-02",
                                       lake, "fail")))
    assertDataFrameEqual(_predictions(spark, lake, "fail"), expected, rtol=1e-6)


def test_regression_drift_is_judged_on_the_rows_added_after_the_training_version(spark, own_lake):
    lake = own_lake
    trained_on, new = D.rows(10, seed=5), D.rows(120, start=3000, seed=5)
    D.write_clean(spark, lake, "reg", trained_on)  # v0: the version the card says the model was trained on
    version = D.write_clean(spark, lake, "reg", new)
    error = D.in_process_scores(D.save(lake, "reg", "mr", "regression"), new) - new["arr_delay"].to_numpy()
    rmse, mae = np.sqrt(np.mean(error ** 2)), np.mean(np.abs(error))
    # On the card: an RMSE 2% worse than today's (better now: no drift), an MAE half of today's (drift).
    D.register_model(spark, lake, "reg", "mr", "regression", {"rmse": rmse * 1.02, "mae": mae / 2})

    report = run_infer(spark, lake, D.config(lake, "reg", kind="regression"), "2024-01-01", model_version="mr")

    compared = report.comparison["new_rows"]
    assert (compared["rmse"]["now"], compared["mae"]["now"], compared["mae"]["rows"]) == (
        pytest.approx(rmse), pytest.approx(mae), 120)
    assert (list(report.drift), report.source_version) == (["mae"], version)


def _split_table(spark, lake: Lake, dataset: str, data) -> None:
    """A clean table v0 whose every fourth flight is in the test split."""
    split = F.when(F.col("flight") % 4 == 0, F.lit("test")).otherwise(F.lit("train"))
    D.frame(spark, data).withColumn("split", split).write.format("delta").save(lake.table(dataset, "clean"))


def test_on_the_training_version_the_test_split_must_reproduce_the_card(spark, own_lake):
    data = D.rows(200, seed=12)
    _split_table(spark, own_lake, "sane", data)
    test = data[data["flight"] % 4 == 0]
    scores = D.in_process_scores(D.save(own_lake, "sane", "ms"), test)
    card_metrics = {"accuracy": float(np.mean((scores >= 0.5) == test["delayed"].to_numpy()))}
    D.register_model(spark, own_lake, "sane", "ms", test_metrics=card_metrics)

    report = run_infer(spark, own_lake, D.config(own_lake, "sane"), "2024-01-01", model_version="ms")

    assert (report.comparison["sanity"]["accuracy"]["now"], report.sanity_failed) == (
        pytest.approx(card_metrics["accuracy"]), {})
    assert "new_rows" not in report.comparison  # the rows it was trained on say nothing about drift


def test_a_card_whose_test_metrics_the_test_split_does_not_reproduce_fails_the_sanity_check(spark, own_lake):
    _split_table(spark, own_lake, "insane", D.rows(200, seed=12))
    D.register_model(spark, own_lake, "insane", "mi", test_metrics={"accuracy": 0.99})
    report = run_infer(spark, own_lake, D.config(own_lake, "insane"), "2024-01-01", model_version="mi")
    assert list(report.sanity_failed) == ["accuracy"]


def test_a_feature_whose_distribution_moved_on_the_new_rows_is_flagged_and_the_others_are_not(spark, own_lake):
    trained_on = D.rows(400, seed=13)
    new = D.rows(400, start=6000, seed=13)
    new["distance"] = new["distance"] + 1500.0  # longer flights than training ever saw
    D.write_clean(spark, own_lake, "shift", trained_on)
    D.write_clean(spark, own_lake, "shift", D.with_hash(new))
    folder = D.save(own_lake, "shift", "mp")
    reference = training_reference(TabularModel.load(folder, "mp"), D.frame(spark, trained_on), len(trained_on),
                                   512, 10_000)
    D.register_model(spark, own_lake, "shift", "mp", reference=reference)

    report = run_infer(spark, own_lake, D.config(own_lake, "shift"), "2024-01-02", model_version="mp")

    assert report.comparison["distributions"]["distance"]["rows"] == 400
    assert "distance" in report.distribution_drift
    assert not {"sched_dep_hour", "origin"} & set(report.distribution_drift)


def test_model_folder_changed_after_registration_is_refused(lake):
    card = json.loads((lake.model_dir("flights", "mb") / "card.json").read_text())
    card["model_spec"] = {**card["model_spec"], "mean": {"distance": 1.0, "sched_dep_hour": 13.0}}
    with pytest.raises(InferenceError, match="differs from the one on the model card"):
        load_model(card)


def test_a_table_version_that_does_not_exist_is_refused(spark, own_lake):
    D.write_clean(spark, own_lake, "versions", D.rows(8, seed=6))
    with pytest.raises(InferenceError, match=r"no version 5 \(versions 0\.\.0\)"):
        run_infer(spark, own_lake, D.config(own_lake, "versions"), "2024-01-01", model_version="mb", table_version=5)
    assert not delta_io.table_exists(spark, own_lake.table("versions", "predictions"))  # nothing was written


def _summary(spark, lake: Lake, dataset: str, logical_date: str):
    path = lake.table(dataset, "inference_summary")
    return delta_io.read_version(spark, path).where(F.col("logical_date") == F.to_date(F.lit(logical_date)))


@pytest.fixture()
def past_interval_rerun(spark, own_lake):
    """Dataset 'past': interval 2024-01-01 scored on v0 (60 rows); 12 rows changed in place (v1) and interval
    2024-01-02 scored incrementally on v1; then interval 2024-01-01 re-run on its own version v0."""
    first = D.rows(60, seed=9)
    D.write_clean(spark, own_lake, "past", first)
    config = D.config(own_lake, "past")
    run_infer(spark, own_lake, config, "2024-01-01", model_version="mb", table_version=0, incremental=True)
    summary_before = _summary(spark, own_lake, "past", "2024-01-01").collect()
    changed = first.iloc[::5].copy()
    changed["distance"] = changed["distance"].fillna(1.0) + 400.0
    D.update_clean(spark, own_lake, "past", D.with_hash(changed))
    run_infer(spark, own_lake, config, "2024-01-02", model_version="mb", table_version=1, incremental=True)
    predictions_before = _predictions(spark, own_lake, "past").collect()
    report = run_infer(spark, own_lake, config, "2024-01-01", model_version="mb", table_version=0, incremental=True)
    return {"lake": own_lake, "summary_before": summary_before, "predictions_before": predictions_before,
            "report": report}


def test_rerunning_a_past_interval_does_not_take_predictions_back_to_older_rows(spark, past_interval_rerun):
    """Issue 12: the re-run of 2024-01-01 rewrote the 12 changed rows' predictions from their v0 content."""
    lake = past_interval_rerun["lake"]
    assert len(past_interval_rerun["predictions_before"]) == 60
    assertDataFrameEqual(_predictions(spark, lake, "past"), past_interval_rerun["predictions_before"])


def test_rerunning_a_past_interval_reproduces_its_summary(spark, past_interval_rerun):
    lake = past_interval_rerun["lake"]
    before = past_interval_rerun["summary_before"]
    assert {r["scope"] for r in before} >= {"overall"} and before[0]["source_version"] == 0
    assertDataFrameEqual(_summary(spark, lake, "past", "2024-01-01"), before, rtol=1e-9)


def test_an_interval_rerun_on_another_table_version_replaces_its_summary_rows(spark, own_lake):
    """One summary row per model version, interval and scope, whichever table version a re-run scored."""
    D.write_clean(spark, own_lake, "again", D.rows(40, seed=5))
    D.write_clean(spark, own_lake, "again", D.rows(20, start=900, seed=5))
    config = D.config(own_lake, "again")
    run_infer(spark, own_lake, config, "2024-01-01", model_version="mb", table_version=0)
    report = run_infer(spark, own_lake, config, "2024-01-01", model_version="mb", table_version=1)
    stored = _summary(spark, own_lake, "again", "2024-01-01")
    assert len(report.summary) > 1
    assert sorted((r["scope"], r["source_version"], r["rows"]) for r in stored.collect()) == sorted(
        (r["scope"], 1, r["rows"]) for r in report.summary)


def test_reusing_an_interval_scores_it_with_the_model_and_version_it_used_before(spark, own_lake):
    from shardlake import registry

    D.write_clean(spark, own_lake, "pin", D.rows(40, seed=6))
    D.register_model(spark, own_lake, "pin", "first-model")
    registry.promote(spark, own_lake.registry(), "first-model")
    config = D.config(own_lake, "pin")
    run_infer(spark, own_lake, config, "2024-01-01")
    D.write_clean(spark, own_lake, "pin", D.rows(20, start=900, seed=6))
    D.register_model(spark, own_lake, "pin", "second-model", seed=4)
    registry.promote(spark, own_lake.registry(), "second-model")
    again = run_infer(spark, own_lake, config, "2024-01-01", reuse_interval=True)
    fresh = run_infer(spark, own_lake, config, "2024-01-02", reuse_interval=True)
    assert (again.model_version, again.source_version) == ("first-model", 0)
    assert (fresh.model_version, fresh.source_version) == ("second-model", 1)
