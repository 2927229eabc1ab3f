"""The map stage (TabularModel.transform) and int8 quantisation, against in-process scoring of the same rows."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from pyspark.errors import PythonException
from pyspark.sql import functions as F
from pyspark.testing import assertDataFrameEqual

import infer_data as D
from shardlake import quantize
from shardlake.models.tabular import WEIGHTS_FILE, build_model, save_model
from shardlake.scoring import (PREDICTION, SCORE, ModelMismatchError, TabularModel, build_scoring_model,
                               load_registered, score_frame)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A binary model saved in a folder, as training leaves it."""
    folder = tmp_path_factory.mktemp("model")
    model = build_model(D.spec("binary"), seed=5)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.mul_(3.0)
    save_model(model, folder)
    return folder


@pytest.fixture(scope="module")
def data():
    return D.rows(400, seed=1)


def _expected(spark, data, scores, kind="binary"):
    """The rows' key and shard with the given scores, as the map stage should return them."""
    expected = data[[*D.KEY, "shard"]].copy()
    expected[PREDICTION] = (scores >= 0.5).astype(np.int32) if kind == "binary" else scores
    expected[SCORE] = scores
    return spark.createDataFrame(expected).select(
        *D.KEY, "shard", F.col(PREDICTION).cast("int" if kind == "binary" else "double"), SCORE)


def test_map_stage_equals_in_process_scoring(spark, saved, data):
    model = TabularModel.load(saved, "m")
    source = D.frame(spark, data).repartition(3)
    # Batches of 64 in Spark against one batch of 400 here: no statistic comes from the batch.
    actual = model.transform(source, [*D.KEY, "shard"], batch_size=64)
    assertDataFrameEqual(actual, _expected(spark, data, D.in_process_scores(saved, data)), rtol=1e-6)


def test_regression_map_stage_predicts_the_value(spark, tmp_path, data):
    model = build_model(D.spec("regression"), seed=9)
    save_model(model, tmp_path)
    actual = TabularModel.load(tmp_path, "r").transform(D.frame(spark, data), [*D.KEY, "shard"], batch_size=100)
    assertDataFrameEqual(actual, _expected(spark, data, D.in_process_scores(tmp_path, data), "regression"),
                         rtol=1e-6)


def test_quantized_map_stage_equals_in_process_int8_scoring(spark, saved, data):
    model = TabularModel.load(saved, "m")
    int8, device = build_scoring_model(model.spec, model.weights, quantize=True)
    _, scores = score_frame(int8, model.spec, data, device)
    # int8 activations are quantised per batch with the batch's range: one partition, one batch, as here.
    actual = model.transform(D.frame(spark, data).coalesce(1), [*D.KEY, "shard"], batch_size=400, quantize=True)
    assertDataFrameEqual(actual, _expected(spark, data, scores), rtol=1e-5)


def test_quantized_scores_stay_close_to_float(saved, data):
    model = TabularModel.load(saved, "m")
    float_model, device = build_scoring_model(model.spec, model.weights, device=torch.device("cpu"))
    int8, _ = build_scoring_model(model.spec, model.weights, quantize=True)
    _, reference = score_frame(float_model, model.spec, data, device)
    _, scores = score_frame(int8, model.spec, data, device)
    assert not np.array_equal(scores, reference)  # it did quantise
    assert np.abs(scores - reference).max() < 0.1


def test_quantization_report_has_metric_and_speed_change(saved, data):
    model = TabularModel.load(saved, "m")
    result = quantize.compare(model.spec, model.weights, data, "delayed", batch_size=128, repeat=1)
    assert result["rows"] == len(data)
    assert result["float"]["rows_per_s"] > 0 and result["int8"]["rows_per_s"] > 0
    assert result["speedup"] == pytest.approx(result["int8"]["rows_per_s"] / result["float"]["rows_per_s"], rel=1e-2)
    assert result["metric_change"]["auc"] == pytest.approx(result["int8"]["auc"] - result["float"]["auc"])
    assert 0 < result["max_abs_score_diff"] < 0.1


def test_quantized_predictions_are_their_own_model_version():
    assert quantize.scored_version("flights-v3-abc", quantize=True) == "flights-v3-abc+int8"
    assert quantize.scored_version("flights-v3-abc", quantize=False) == "flights-v3-abc"


def test_missing_feature_column_is_refused(spark, saved, data):
    source = D.frame(spark, data).drop("distance")
    with pytest.raises(ValueError, match="distance"):
        TabularModel.load(saved, "m").transform(source, D.KEY)


def test_injected_failure_is_raised_inside_the_map_task(spark, saved, data):
    scored = TabularModel.load(saved, "m").transform(D.frame(spark, data).repartition(2), D.KEY, fail_on_partition=1)
    with pytest.raises(PythonException, match="InjectedFailure"):
        scored.collect()



def test_arrow_batches_encode_exactly_like_pandas_frames(data):
    """The map stage hands encode Arrow-derived columns; the transform must be the one training applies."""
    import pyarrow as pa

    from shardlake.models.tabular import encode
    from shardlake.scoring import arrow_features

    spec = D.spec("binary")
    messy = data.assign(carrier=data["carrier"].where(data.index % 7 != 0, None))  # missing and unknown ('ZZ')
    batch = pa.RecordBatch.from_pandas(messy, preserve_index=False)
    numeric, categorical = encode(arrow_features(batch, spec), spec)
    expected_numeric, expected_categorical = encode(messy, spec)
    np.testing.assert_array_equal(numeric, expected_numeric)
    np.testing.assert_array_equal(categorical, expected_categorical)
    assert (categorical[:, 0] == 0).sum() == (messy["carrier"].isna() | (messy["carrier"] == "ZZ")).sum()


@pytest.mark.parametrize("rows, batch_size, expected", [
    (10000, 8192, [(0, 5000), (5000, 5000)]), (100, 8192, [(0, 100)]), (0, 8192, []),
    (7, 3, [(0, 3), (3, 3), (6, 1)])])
def test_arrow_batches_are_cut_into_even_pieces(rows, batch_size, expected):
    from shardlake.scoring import even_slices

    assert even_slices(rows, batch_size) == expected


@pytest.mark.parametrize("addresses, cuda_devices, partition, expected", [
    ([], 0, 5, "cpu"), (["1"], 0, 5, "cpu"),  # no CUDA: the CPU whatever Spark assigned
    (["1"], 2, 0, "cuda:1"),  # Spark's GPU assignment wins
    ([], 2, 5, "cuda:1"), ([], 4, 6, "cuda:2")])  # unassigned tasks spread over the GPUs
def test_map_task_device(addresses, cuda_devices, partition, expected):
    from shardlake.scoring import device_for_task

    assert device_for_task(addresses, cuda_devices, partition) == expected


def _card_of(folder, **extra) -> dict:
    return {"model_version": "m", "model_dir": str(folder), "model_spec": D.spec("binary").to_dict(), **extra}


def test_a_registered_model_whose_weights_match_its_card_loads(saved):
    import hashlib

    digest = hashlib.sha256((saved / WEIGHTS_FILE).read_bytes()).hexdigest()
    assert load_registered(_card_of(saved, weights_sha256=digest)).weights == (saved / WEIGHTS_FILE).read_bytes()


def test_a_registered_model_whose_weights_changed_after_registration_is_refused(tmp_path):
    import hashlib

    save_model(build_model(D.spec("binary"), seed=5), tmp_path)
    card = _card_of(tmp_path, weights_sha256=hashlib.sha256((tmp_path / WEIGHTS_FILE).read_bytes()).hexdigest())
    save_model(build_model(D.spec("binary"), seed=6), tmp_path)  # another run's weights, same spec
    with pytest.raises(ModelMismatchError, match="weights' sha256 differs"):
        load_registered(card)

