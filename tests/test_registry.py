"""The model registry: a Delta table of model versions, their cards and stages; promotion and the gate's figures.

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


def test_promotion_demotes_the_previous_production_model(spark, path, ds):
    for version, metric in (("m1", 0.7), ("m2", 0.8)):
        registry.register(spark, path, card(version, metric, ds))
        registry.promote(spark, path, f"{ds}-{version}")
    assertDataFrameEqual(stages(spark, path, ds), expect(spark, [("m1", "archived"), ("m2", "production")]))


def test_inference_gets_the_promoted_model_by_default(spark, path, ds):
    for version in ("m1", "m2", "m3"):
        registry.register(spark, path, card(version, 0.7, ds))
    registry.promote(spark, path, f"{ds}-m2")
    assert registry.production_model(spark, path, ds)["model_version"] == f"{ds}-m2"


def test_there_is_no_production_model_before_a_promotion(spark, path, ds):
    registry.register(spark, path, card("m1", 0.7, ds))
    assert registry.production_model(spark, path, ds) is None


def test_promoting_an_unknown_model_is_refused(spark, path, ds):
    registry.register(spark, path, card("m1", 0.7, ds))
    with pytest.raises(registry.PromotionError, match="not in the registry"):
        registry.promote(spark, path, f"{ds}-nope")


def test_a_promotion_against_a_champion_that_was_replaced_meanwhile_is_refused(spark, path, ds):
    for version in ("m1", "m2", "m3"):
        registry.register(spark, path, card(version, 0.7, ds))
    registry.promote(spark, path, f"{ds}-m1")
    registry.promote(spark, path, f"{ds}-m2")  # another gate's promotion, after m3's gate compared with m1
    with pytest.raises(registry.PromotionError, match=f"became {ds}-m2 while the gate compared against {ds}-m1"):
        registry.promote(spark, path, f"{ds}-m3", {"gate_metric": 0.8}, champion=f"{ds}-m1")
    assertDataFrameEqual(stages(spark, path, ds),
                         expect(spark, [("m1", "archived"), ("m2", "production"), ("m3", "candidate")]))


def test_a_refusal_records_the_figures_and_leaves_the_stages(spark, path, ds):
    registry.register(spark, path, card("m1", 0.7, ds))
    registry.record_refusal(spark, path, f"{ds}-m1", {"gate_metric": 0.61, "champion_metric": 0.64,
                                                      "champion_version": "x", "gate_table_version": 3})
    row = delta_io.read_version(spark, path).where(F.col("model_version") == f"{ds}-m1").first()
    assert (row["stage"], row["gate_metric"], row["champion_metric"], row["champion_version"]) == (
        "candidate", 0.61, 0.64, "x")


def test_the_latest_trained_model_of_a_config_and_code_is_the_one_on_the_newest_table_version(spark, path, ds):
    for version, table_version, code in (("a", 3, "c1"), ("b", 5, "c1"), ("c", 7, "c2")):
        registry.register(spark, path, {**card(version, 0.7, ds), "table_version": table_version,
                                        "config_hash": "h", "code_version": code})
    assert registry.latest_trained(spark, path, ds, "h", "c1") == f"{ds}-b"


def test_registering_a_version_again_keeps_its_stage(spark, path, ds):
    registry.register(spark, path, card("m1", 0.7, ds))
    registry.promote(spark, path, f"{ds}-m1")
    registry.register(spark, path, card("m1", 0.71, ds))
    assertDataFrameEqual(stages(spark, path, ds), expect(spark, [("m1", "production")]))


def test_promotion_in_one_dataset_leaves_another_datasets_production_model(spark, path, ds):
    other = f"{ds}-other"
    registry.register(spark, path, card("f1", 0.7, ds))
    registry.register(spark, path, card("w1", 0.7, other))
    registry.promote(spark, path, f"{other}-w1")
    registry.promote(spark, path, f"{ds}-f1")
    assert registry.production_model(spark, path, other)["model_version"] == f"{other}-w1"


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
    _at_once(lambda: registry.promote(spark, path, f"{ds}-f1"),
             lambda: registry.promote(spark, path, f"{other}-w1"))
    assert [registry.production_model(spark, path, d)["model_version"] for d in (ds, other)] == [
        f"{ds}-f1", f"{other}-w1"]
