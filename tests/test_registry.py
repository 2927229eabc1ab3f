"""The model registry: a Delta table of model versions, their cards and stages; promotion by threshold.

One registry table for the module (creating a Delta table is the slow part); each test works in
a dataset of its own, and promotion never reaches across datasets.
"""
from __future__ import annotations

import threading

import pytest
from pyspark.sql import functions as F
from pyspark.testing import assertDataFrameEqual

from shardlake import delta_io, registry
from shardlake.lake import Lake
from shardlake.stages import train


def card(version: str, metric: float, dataset: str, kind: str = "binary") -> dict:
    return {"model_version": f"{dataset}-{version}", "dataset": dataset, "table_path": f"/lake/{dataset}/clean",
            "table_version": 3, "metric_name": "auc" if kind == "binary" else "rmse", "validation_metric": metric,
            "model_dir": f"/lake/models/{dataset}/{version}", "model_spec": {"kind": kind}}


@pytest.fixture(scope="module")
def lake(tmp_path_factory) -> Lake:
    return Lake.at(tmp_path_factory.mktemp("registry"))


@pytest.fixture(scope="module")
def path(lake) -> str:
    return lake.registry()


@pytest.fixture()
def ds(request) -> str:
    """This test's own dataset name."""
    return request.node.name.removeprefix("test_")[:40]


def stages(spark, path: str, dataset: str):
    return (delta_io.read_version(spark, path).where(F.col("dataset") == dataset)
            .select(F.expr(f"substr(model_version, {len(dataset) + 2})").alias("model_version"), "stage"))


def expect(spark, rows):
    return spark.createDataFrame(rows, "model_version string, stage string")


def test_a_registered_model_is_a_candidate_with_its_card(spark, path, ds):
    registry.register(spark, path, card("m1", 0.7, ds))
    assert registry.model_card(spark, path, f"{ds}-m1") == card("m1", 0.7, ds)
    assertDataFrameEqual(stages(spark, path, ds), expect(spark, [("m1", "candidate")]))


def test_promotion_below_the_threshold_is_refused_and_the_model_stays_a_candidate(spark, path, ds):
    registry.register(spark, path, card("m1", 0.55, ds))
    with pytest.raises(registry.PromotionError, match="threshold 0.6"):
        registry.promote(spark, path, f"{ds}-m1", threshold=0.6)
    assertDataFrameEqual(stages(spark, path, ds), expect(spark, [("m1", "candidate")]))


def test_promotion_demotes_the_previous_production_model(spark, path, ds):
    for version, metric in (("m1", 0.7), ("m2", 0.8)):
        registry.register(spark, path, card(version, metric, ds))
        registry.promote(spark, path, f"{ds}-{version}", threshold=0.6)
    assertDataFrameEqual(stages(spark, path, ds), expect(spark, [("m1", "archived"), ("m2", "production")]))


def test_inference_gets_the_promoted_model_by_default(spark, path, ds):
    for version in ("m1", "m2", "m3"):
        registry.register(spark, path, card(version, 0.7, ds))
    registry.promote(spark, path, f"{ds}-m2", threshold=0.6)
    assert registry.production_model(spark, path, ds)["model_version"] == f"{ds}-m2"


def test_there_is_no_production_model_before_a_promotion(spark, path, ds):
    registry.register(spark, path, card("m1", 0.7, ds))
    assert registry.production_model(spark, path, ds) is None


def test_for_rmse_a_model_must_be_at_or_below_the_threshold(spark, path, ds):
    registry.register(spark, path, card("r1", 14.0, ds, kind="regression"))
    registry.register(spark, path, card("r2", 11.0, ds, kind="regression"))
    with pytest.raises(registry.PromotionError):
        registry.promote(spark, path, f"{ds}-r1", threshold=12.0, higher_is_better=False)
    registry.promote(spark, path, f"{ds}-r2", threshold=12.0, higher_is_better=False)
    assertDataFrameEqual(stages(spark, path, ds), expect(spark, [("r1", "candidate"), ("r2", "production")]))


def test_a_model_without_a_validation_metric_is_never_promoted(spark, path, ds):
    registry.register(spark, path, card("m1", float("nan"), ds))
    with pytest.raises(registry.PromotionError):
        registry.promote(spark, path, f"{ds}-m1", threshold=0.0)


def test_promoting_an_unknown_model_is_refused(spark, path, ds):
    registry.register(spark, path, card("m1", 0.7, ds))
    with pytest.raises(registry.PromotionError, match="not in the registry"):
        registry.promote(spark, path, f"{ds}-nope", threshold=0.0)


def test_registering_a_version_again_keeps_its_stage(spark, path, ds):
    registry.register(spark, path, card("m1", 0.7, ds))
    registry.promote(spark, path, f"{ds}-m1", threshold=0.6)
    registry.register(spark, path, card("m1", 0.71, ds))
    assertDataFrameEqual(stages(spark, path, ds), expect(spark, [("m1", "production")]))


def test_promotion_in_one_dataset_leaves_another_datasets_production_model(spark, path, ds):
    other = f"{ds}-other"
    registry.register(spark, path, card("f1", 0.7, ds))
    registry.register(spark, path, card("w1", 0.7, other))
    registry.promote(spark, path, f"{other}-w1", threshold=0.6)
    registry.promote(spark, path, f"{ds}-f1", threshold=0.6)
    assert registry.production_model(spark, path, other)["model_version"] == f"{other}-w1"


def test_promote_if_good_reports_a_refusal_instead_of_raising(spark, lake, ds):
    registry.register(spark, lake.registry(), card("m1", 0.5, ds))
    assert train.promote_if_good(spark, lake, card("m1", 0.5, ds), threshold=0.6) is False


def test_promote_if_good_judges_regression_cards_by_rmse_downwards(spark, lake, ds):
    registry.register(spark, lake.registry(), card("r1", 11.0, ds, kind="regression"))
    assert train.promote_if_good(spark, lake, card("r1", 11.0, ds, kind="regression"), threshold=12.0) is True


def _at_once(*calls) -> None:
    """Run the calls in threads released together, so their Delta commits race; re-raise any error."""
    gate = threading.Barrier(len(calls))
    errors: list[BaseException] = []

    def run(call):
        gate.wait()
        try:
            call()
        except BaseException as err:  # noqa: BLE001  (reported to the test below)
            errors.append(err)

    threads = [threading.Thread(target=run, args=(c,)) for c in calls]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]


def test_two_registrations_at_once_both_land(spark, path, ds):
    registry.register(spark, path, card("m0", 0.7, ds))  # the table exists: only the MERGEs race
    _at_once(lambda: registry.register(spark, path, card("m1", 0.7, ds)),
             lambda: registry.register(spark, path, card("m2", 0.7, ds)))
    assertDataFrameEqual(stages(spark, path, ds),
                         expect(spark, [("m0", "candidate"), ("m1", "candidate"), ("m2", "candidate")]))


def test_two_promotions_at_once_in_two_datasets_both_land(spark, path, ds):
    other = f"{ds}-other"
    registry.register(spark, path, card("f1", 0.7, ds))
    registry.register(spark, path, card("w1", 0.7, other))
    _at_once(lambda: registry.promote(spark, path, f"{ds}-f1", threshold=0.6),
             lambda: registry.promote(spark, path, f"{other}-w1", threshold=0.6))
    assert [registry.production_model(spark, path, d)["model_version"] for d in (ds, other)] == [
        f"{ds}-f1", f"{other}-w1"]
