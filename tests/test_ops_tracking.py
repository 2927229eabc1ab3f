"""MLflow tracking and the registry alias with the real embedded store (SQLite under the lake), no mocks.

One lake, two real training runs (the training stage, Horovod, one epoch each on a small table):
'poor' (a learning rate too small to move the weights) is gated first and becomes production;
'good' beats it and replaces it; 'poor' judged again is refused. After each gate the alias is
read back from MLflow; then inference of the production model. Tests that change the store work
on a copy of the lake, so every test reads the shared runs as they were left.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from shardlake import delta_io, registry
from shardlake.config import MlflowSettings, load_config
from shardlake.lake import Lake
from shardlake.ops import tracking, tracking_run
from shardlake.stages import train
from shardlake.stages.gate import run_gate
from shardlake.stages.infer import InferenceError, resolve_card, run_infer
from shardlake.training.sample import flights_like_frame, write_clean_table

REPO = Path(__file__).resolve().parent.parent
MODEL = "shardlake-flights"
ALIAS = "champion"


def _config(lake: Lake, *overrides: str):
    return load_config([REPO / "conf" / "base.yaml"], [
        f"lake.root={lake.root}", "train.epochs=1", "train.batch_size=64", "train.num_proc=1",
        "train.promote_threshold=0.0", "train.promote_margin=0.0", "train.start_timeout_s=300",
        "infer.plot_sample_rows=200", *overrides])


def _client(lake: Lake):
    from mlflow import MlflowClient

    uri = tracking.target(MlflowSettings(), lake).tracking_uri
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def _aliased(lake: Lake) -> str:
    """The shardlake model version MLflow's alias names now."""
    return _client(lake).get_model_version_by_alias(MODEL, ALIAS).tags[tracking.VERSION_TAG]


def _clean_rows(rows: int) -> pd.DataFrame:
    """A small clean-like table with the flights key (``flight`` = ``row_id`` makes it unique) and row hashes."""
    frame = flights_like_frame(rows, seed=5, splits=(60, 20, 20), shards=2)
    frame = frame.assign(year=np.int32(2013), day=(frame["row_id"] % 28 + 1).astype(np.int32),
                         flight=frame["row_id"].astype(np.int32),
                         sched_dep_time=(frame["sched_dep_hour"] * 100).astype(np.int32))
    content = frame.drop(columns=["shard", "split"])
    return frame.assign(_row_hash=pd.util.hash_pandas_object(content, index=False).astype(np.int64))


@pytest.fixture(scope="module")
def runs(spark, tmp_path_factory) -> dict:
    lake = Lake.at(tmp_path_factory.mktemp("tracking") / "lake")
    frame = _clean_rows(1200)
    write_clean_table(spark, lake.table("flights", "clean"), frame)
    quiet = lambda _: None  # noqa: E731
    poor_config = _config(lake, "train.learning_rate=1e-9")
    good_config = _config(lake, "train.learning_rate=0.03", "train.epochs=2")
    gate = lambda config, name, again=False: run_gate(  # noqa: E731
        spark, lake, config.dataset, config.train, name, judge_again=again, mlflow=config.monitoring.mlflow)
    _, poor = train.fit(spark, lake, poor_config, "test-code", run_id="poor", log=quiet)
    decisions, aliased = {"poor": gate(poor_config, "poor")}, {"poor": _aliased(lake)}
    _, good = train.fit(spark, lake, good_config, "test-code", run_id="good", log=quiet)
    decisions["good"], aliased["good"] = gate(good_config, "good"), _aliased(lake)
    decisions["poor again"], aliased["poor again"] = gate(poor_config, "poor", again=True), _aliased(lake)
    report = run_infer(spark, lake, good_config, "2024-01-01")
    return {"lake": lake, "frame": frame, "cards": {"poor": poor, "good": good}, "decisions": decisions,
            "aliased": aliased, "report": report, "config": good_config}


def _run_of(lake: Lake, name: str):
    client = _client(lake)
    version = tracking.version_of(client, MODEL, name)
    return client, client.get_run(version.run_id)


def _copy(lake: Lake, tmp_path: Path) -> Lake:
    """A lake of the test's own holding what the shared lake holds (the registry, models and MLflow store)."""
    shutil.copytree(lake.root, tmp_path / "lake")
    return Lake.at(tmp_path / "lake")


slow = pytest.mark.slow  # the tests of the shared training runs; the ones at the end need neither Spark nor MLflow


@slow
def test_the_first_promotion_points_the_alias_at_the_promoted_model(runs):
    assert (runs["decisions"]["poor"].promoted, runs["aliased"]["poor"]) == (True, "poor")


@slow
def test_the_alias_moves_to_a_better_model(runs):
    assert (runs["decisions"]["good"].promoted, runs["aliased"]["good"]) == (True, "good")


@slow
def test_the_alias_stays_when_the_gate_refuses_a_worse_model(runs):
    assert (runs["decisions"]["poor again"].promoted, runs["aliased"]["poor again"]) == (False, "good")


@slow
def test_the_registry_tables_production_row_is_the_aliased_model(spark, runs):
    production = registry.production_model(spark, runs["lake"].registry(), "flights")
    assert production["model_version"] == _aliased(runs["lake"])


@slow
def test_inference_scores_with_the_aliased_model(spark, runs):
    lake = runs["lake"]
    written = delta_io.read_version(spark, lake.table("flights", "predictions")).select("model_version").distinct()
    assert ([r["model_version"] for r in written.collect()], runs["report"].model_version) == (["good"], "good")


@slow
def test_inference_refuses_an_alias_that_disagrees_with_the_registry_table(spark, runs, tmp_path):
    lake = _copy(runs["lake"], tmp_path)
    client = _client(lake)
    client.set_registered_model_alias(MODEL, ALIAS, tracking.version_of(client, MODEL, "poor").version)
    with pytest.raises(InferenceError, match=r"shardlake-flights@champion is version \d+ \(shardlake model poor\) "
                                             r"but the lake registry's production model of 'flights' is good"):
        resolve_card(spark, lake, "flights", None, MlflowSettings())


@slow
def test_a_later_gate_moves_an_alias_left_behind_back_to_the_production_model(spark, runs, tmp_path):
    lake = _copy(runs["lake"], tmp_path)
    client = _client(lake)
    client.set_registered_model_alias(MODEL, ALIAS, tracking.version_of(client, MODEL, "poor").version)
    config = _config(lake)
    run_gate(spark, lake, config.dataset, config.train, "good", mlflow=config.monitoring.mlflow)
    assert _aliased(lake) == "good"


@slow
def test_per_epoch_metrics_are_the_cards_history(runs):
    card = runs["cards"]["good"]
    client, run = _run_of(runs["lake"], "good")
    logged = {key: [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, key)]
              for key in ("train_loss", "validation_auc")}
    assert logged == {"train_loss": [(h["epoch"], h["train_loss"]) for h in card["history"]],
                      "validation_auc": [(h["epoch"], h["validation"]["auc"]) for h in card["history"]]}
    assert len(card["history"]) == 2


@slow
def test_the_test_metrics_are_the_cards(runs):
    card = runs["cards"]["good"]
    _, run = _run_of(runs["lake"], "good")
    assert {k: run.data.metrics[f"test_{k}"] for k in card["test_metrics"]} == pytest.approx(card["test_metrics"])


@slow
def test_the_run_is_tagged_with_what_it_trained_on_and_how(runs):
    card = runs["cards"]["good"]
    _, run = _run_of(runs["lake"], "good")
    tags = run.data.tags
    assert (tags["shardlake.config_hash"], tags["shardlake.code_version"], tags["shardlake.table_path"],
            tags["shardlake.table_version"], run.data.params["learning_rate"]) == (
        card["config_hash"], "test-code", runs["lake"].table("flights", "clean"), str(card["table_version"]), "0.03")


@slow
def test_the_card_and_the_training_curve_are_artifacts_of_the_run(runs, tmp_path):
    client, run = _run_of(runs["lake"], "good")
    card = json.loads(Path(client.download_artifacts(run.info.run_id, tracking_run.CARD_FILE, str(tmp_path))).read_text())
    curve = Path(client.download_artifacts(run.info.run_id, tracking_run.CURVE_FILE, str(tmp_path))).read_bytes()
    assert (card["model_version"], card["weights_sha256"], curve[:8]) == (
        "good", runs["cards"]["good"]["weights_sha256"], b"\x89PNG\r\n\x1a\n")


@slow
def test_the_pyfunc_model_scores_a_pandas_frame_as_the_map_stage_does(spark, runs):
    import mlflow.pyfunc

    lake = runs["lake"]
    stored = delta_io.read_version(spark, lake.table("flights", "predictions")).select("flight", "prediction", "score")
    expected = stored.toPandas().set_index("flight").sort_index()
    frame = runs["frame"].set_index("flight", drop=False).loc[expected.index]
    uri = tracking.target(MlflowSettings(), lake).tracking_uri
    mlflow.set_tracking_uri(uri)
    try:
        model = mlflow.pyfunc.load_model(f"models:/{MODEL}@{ALIAS}")
        scored = model.predict(frame.reset_index(drop=True))
    finally:
        mlflow.set_tracking_uri(None)
    assert len(scored) == len(expected) == len(runs["frame"])
    np.testing.assert_allclose(scored["score"].to_numpy(), expected["score"].to_numpy(), rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(scored["prediction"].to_numpy(), expected["prediction"].to_numpy())


@slow
def test_no_credential_from_the_environment_is_logged(runs):
    secrets = [os.environ[k] for k in ("AWS_SECRET_ACCESS_KEY", "AWS_ACCESS_KEY_ID") if os.environ.get(k)]
    client = _client(runs["lake"])
    logged = []
    for name in ("poor", "good"):
        _, run = _run_of(runs["lake"], name)
        logged += [*run.data.params.items(), *run.data.tags.items()]
        logged += list(tracking.version_of(client, MODEL, name).tags.items())
    text = json.dumps(logged)
    assert secrets and not [s for s in secrets if s in text]


@slow
def test_logging_a_model_version_twice_logs_it_once(runs, tmp_path):
    lake = _copy(runs["lake"], tmp_path)
    again = tracking.log_training(MlflowSettings(), lake, runs["cards"]["good"])
    versions = _client(lake).search_model_versions(f"name = '{MODEL}'")
    assert (again, len(versions)) == (str(tracking.version_of(_client(lake), MODEL, "good").version), 2)


# --- where MLflow is, and where it is not (no Spark, no training) ---------------------------------

def test_a_local_lake_tracks_to_the_embedded_store_under_its_root(tmp_path):
    t = tracking.target(MlflowSettings(), Lake.at(tmp_path / "lake"))
    assert (t.tracking_uri, t.artifact_location) == (f"sqlite:///{tmp_path}/lake/_mlflow/mlflow.db",
                                                     (tmp_path / "lake" / "_mlflow" / "artifacts").as_uri())


def test_an_object_store_lake_without_a_tracking_uri_has_no_mlflow():
    assert tracking.target(MlflowSettings(), Lake.at("s3a://bucket/lake")) is None


def test_a_configured_tracking_uri_wins_on_any_lake():
    assert tracking.target(MlflowSettings(tracking_uri="http://127.0.0.1:5000"),
                           Lake.at("hdfs://127.0.0.1:9000/lake")).tracking_uri == "http://127.0.0.1:5000"


def test_a_store_that_cannot_be_written_is_one_clear_error(tmp_path):
    blocked = tmp_path / "file"
    blocked.write_text("not a folder")
    settings = MlflowSettings(tracking_uri=f"sqlite:///{blocked}/mlflow.db")
    card = {"model_version": "m", "dataset": "d", "model_dir": str(tmp_path)}
    with pytest.raises(tracking.TrackingError, match=r"^MLflow at sqlite:///.*: could not reach its store") as err:
        tracking.log_training(settings, Lake.at(tmp_path / "lake"), card)
    assert "\n" not in str(err.value)


def test_a_tracking_uri_is_shown_without_its_credentials():
    assert tracking.shown("http://user:s3cret@127.0.0.1:5000/mlflow") == "http://127.0.0.1:5000/mlflow"
