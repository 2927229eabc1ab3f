"""Tabular models: architectures from the spec, encoding, regression scale, safetensors artifacts, device choice."""
from __future__ import annotations

import hashlib
import json
import pickle

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors import SafetensorError

from shardlake.folders import Folder
from shardlake.models.tabular import (DIGEST_CHUNK, SPEC_FILE, WEIGHTS_FILE, ModelSpec, TabularLinear, TabularMLP,
                                      build_model, default_device, device_for, encode, load_model, model_from_bytes,
                                      save_model, weights_digest)
from shardlake.scoring import arrow_features
from shardlake.transforms.stats import fit_feature_stats

# Categorical features that are not strings, and the codes they must get, written out by hand:
# vocabularies gate [1, 2, 3] and flag [False, True], code = index + 1, 0 for a missing value.
TYPED_CATEGORY_ROWS = [(0, 3, True), (1, 1, False), (2, 3, True), (3, 2, True), (4, None, None), (5, 3, False)]
TYPED_CATEGORY_CODES = [[3, 2], [1, 1], [3, 2], [2, 2], [0, 0], [3, 1]]


def spec(**changes) -> ModelSpec:
    base = dict(kind="binary", numeric=["x", "y"], categorical=["c"], vocab={"c": ["a", "b", "z"]},
                mean={"x": 10.0, "y": 0.0}, std={"x": 2.0, "y": 1.0}, hidden=[8, 4], embedding_dim=3)
    return ModelSpec(**{**base, **changes})


def frame() -> pd.DataFrame:
    return pd.DataFrame({"x": [10.0, None, 14.0], "y": [1, 2, 3], "c": ["b", "unknown", None]})


def test_mlp_is_built_with_the_hidden_layers_of_the_spec():
    model = build_model(spec(hidden=[8, 4]))
    widths = [m.out_features for m in model.mlp if isinstance(m, torch.nn.Linear)]
    assert (type(model), widths) == (TabularMLP, [8, 4, 1])


def test_linear_architecture_is_one_linear_layer_over_the_same_inputs():
    model = build_model(spec(architecture="linear"))
    linears = [m for m in model.mlp if isinstance(m, torch.nn.Linear)]
    assert (type(model), len(linears), linears[0].in_features) == (TabularLinear, 1, 2 + 3)


def test_an_unknown_architecture_is_refused():
    with pytest.raises(ValueError, match="architecture"):
        spec(architecture="transformer")


def test_encode_gives_vocab_index_plus_one_and_zero_for_unknown_or_missing():
    numeric, categorical = encode(frame(), spec())
    assert categorical[:, 0].tolist() == [2, 0, 0]
    assert np.isnan(numeric[1, 0]) and numeric[:, 1].tolist() == [1.0, 2.0, 3.0]


def test_encode_of_categorical_columns_matches_encode_of_strings():
    as_strings = encode(frame(), spec())
    as_categorical = encode({**{c: frame()[c].to_numpy() for c in ("x", "y")},
                             "c": pd.Categorical(frame()["c"])}, spec())
    np.testing.assert_array_equal(as_strings[1], as_categorical[1])


def _category_codes_in_map_stage(spec_dict: dict):
    """mapInArrow function: the codes the map stage's feature path (arrow_features, encode) gives each row."""

    def codes(batches):
        import pyarrow as pa

        spec = ModelSpec.from_dict(spec_dict)
        for batch in batches:
            _, categorical = encode(arrow_features(batch, spec), spec)
            yield pa.RecordBatch.from_arrays([batch.column("id"), *(pa.array(categorical[:, i]) for i in range(2))],
                                             names=["id", "gate_code", "flag_code"])

    return codes


def test_the_map_stage_encodes_int_and_bool_categories_as_their_vocabulary_indices(spark):
    df = spark.createDataFrame(TYPED_CATEGORY_ROWS, "id int, gate int, flag boolean").repartition(2)
    stats = fit_feature_stats(df, [], ["gate", "flag"], max_categories=10)
    typed = ModelSpec(kind="binary", numeric=[], categorical=["gate", "flag"], vocab=stats.vocab, mean={}, std={})
    rows = df.mapInArrow(_category_codes_in_map_stage(typed.to_dict()), "id int, gate_code long, flag_code long")
    assert [[r["gate_code"], r["flag_code"]] for r in sorted(rows.collect())] == TYPED_CATEGORY_CODES


def test_regression_predictions_are_in_the_label_unit():
    model = build_model(spec(kind="regression", target_mean=5.0, target_std=20.0), seed=0).eval()
    numeric, categorical = (torch.from_numpy(a) for a in encode(frame(), model.spec))
    raw = model(numeric, categorical)
    torch.testing.assert_close(model.predict(numeric, categorical), raw * 20.0 + 5.0)


def test_regression_loss_target_is_standardised_with_the_spec_scale():
    model = build_model(spec(kind="regression", target_mean=5.0, target_std=20.0))
    assert model.loss_target(torch.tensor([5.0, 25.0])).tolist() == [0.0, 1.0]


def test_a_saved_model_predicts_the_same_after_loading(tmp_path):
    model = build_model(spec(), seed=3).eval()
    save_model(model, tmp_path)
    loaded = load_model(tmp_path)
    numeric, categorical = (torch.from_numpy(a) for a in encode(frame(), model.spec))
    torch.testing.assert_close(loaded.predict(numeric, categorical), model.predict(numeric, categorical))


def test_a_model_saved_on_an_object_store_predicts_the_same_after_loading(s3_server):
    folder = Folder(f"s3a://{s3_server.bucket('model')}/lake/models/m", s3_server.settings)
    model = build_model(spec(), seed=3).eval()
    save_model(model, folder)
    numeric, categorical = (torch.from_numpy(a) for a in encode(frame(), model.spec))
    torch.testing.assert_close(load_model(folder).predict(numeric, categorical), model.predict(numeric, categorical))


def test_the_digest_of_weights_on_an_object_store_is_the_sha256_of_the_object(s3_server):
    bucket = s3_server.bucket("digest")
    save_model(build_model(spec(), seed=3), Folder(f"s3a://{bucket}/m", s3_server.settings))
    with s3_server.filesystem().open_input_stream(f"{bucket}/m/{WEIGHTS_FILE}") as stored:  # read past the Store
        expected = hashlib.sha256(stored.read()).hexdigest()
    assert weights_digest(Folder(f"s3a://{bucket}/m", s3_server.settings)) == expected


def test_saved_weights_are_safetensors_with_a_json_spec(tmp_path):
    save_model(build_model(spec()), tmp_path)
    header_length = int.from_bytes((tmp_path / WEIGHTS_FILE).read_bytes()[:8], "little")
    header = (tmp_path / WEIGHTS_FILE).read_bytes()[8:8 + header_length]
    assert header.startswith(b"{") and b'"mlp.0.weight"' in header
    assert ModelSpec.from_dict(json.loads((tmp_path / SPEC_FILE).read_text())) == spec()


def test_the_weights_digest_is_the_sha256_of_the_saved_weights_file(tmp_path):
    save_model(build_model(spec(), seed=3), tmp_path)
    assert weights_digest(tmp_path) == hashlib.sha256((tmp_path / WEIGHTS_FILE).read_bytes()).hexdigest()


def test_the_weights_digest_covers_every_chunk_of_a_large_file(tmp_path):
    # Not a multiple of the chunk size, so the last read is a short one.
    content = np.random.default_rng(0).bytes(2 * DIGEST_CHUNK + 12345)
    (tmp_path / WEIGHTS_FILE).write_bytes(content)
    assert weights_digest(tmp_path) == hashlib.sha256(content).hexdigest()


class _Marker:
    """Unpickling this would create a file: proof that pickled code ran."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (str(self.path), "w"))


def test_a_pickled_weights_file_is_refused_without_running_it(tmp_path):
    save_model(build_model(spec()), tmp_path)
    marker = tmp_path / "pickle-ran"
    (tmp_path / WEIGHTS_FILE).write_bytes(pickle.dumps({"mlp.0.weight": _Marker(marker)}))
    with pytest.raises(SafetensorError):
        model_from_bytes(spec(), (tmp_path / WEIGHTS_FILE).read_bytes())
    assert not marker.exists()


def test_each_local_rank_gets_its_own_gpu_round_robin():
    assert [str(device_for(rank, 2)) for rank in range(4)] == ["cuda:0", "cuda:1", "cuda:0", "cuda:1"]


def test_without_gpus_every_rank_uses_the_cpu():
    assert {str(device_for(rank, 0)) for rank in range(3)} == {"cpu"}


def test_default_device_matches_what_this_machine_has():
    expected = f"cuda:{1 % torch.cuda.device_count()}" if torch.cuda.is_available() else "cpu"
    assert str(default_device(1)) == expected
