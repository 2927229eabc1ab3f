"""The map side of batch inference: score DataFrame partitions with a saved model over Arrow batches.

The map stage is ``mapInArrow``: Spark hands each task Arrow record batches; features are encoded
by the model's own ``encode`` and scored as tensors, and the key columns go back as the same Arrow
arrays. (``mapInPandas`` would turn every string of the key into a Python object and back, which
cost over half the stage's time on the benchmark.)
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from shardlake.folders import Folder
from shardlake.models.tabular import SPEC_FILE, WEIGHTS_FILE, ModelSpec
from shardlake.predictions import PREDICTION, SCORE

__all__ = ["PREDICTION", "SCORE", "ModelMismatchError", "TabularModel", "load_registered"]


class InjectedFailure(RuntimeError):
    """Raised on purpose inside the map stage (tests of what a job that dies mid-write leaves behind)."""


def prediction_fields(kind: str) -> list[T.StructField]:
    """Output columns the map stage adds: a class and its probability, or a value (also as the score)."""
    if kind == "binary":
        return [T.StructField(PREDICTION, T.IntegerType()), T.StructField(SCORE, T.DoubleType())]
    return [T.StructField(PREDICTION, T.DoubleType()), T.StructField(SCORE, T.DoubleType())]


def device_for_task(gpu_addresses: Sequence[str], cuda_devices: int, partition: int) -> str:
    """The device a map task scores on: the GPU Spark assigned to the task (``spark.task.resource.gpu.amount``),
    else with GPUs but no assignment one chosen by partition (so concurrent tasks spread), else the CPU."""
    if cuda_devices <= 0:
        return "cpu"
    if gpu_addresses:
        return f"cuda:{int(gpu_addresses[0]) % cuda_devices}"
    return f"cuda:{max(partition, 0) % cuda_devices}"


def task_device():
    """``device_for_task`` for the running Spark task (the driver, outside a task, counts as partition 0)."""
    import torch
    from pyspark import TaskContext

    context = TaskContext.get()
    gpus = context.resources().get("gpu") if context is not None else None
    cuda_devices = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return torch.device(device_for_task(gpus.addresses if gpus else [], cuda_devices,
                                        context.partitionId() if context is not None else 0))


def build_scoring_model(spec: ModelSpec, weights: bytes, device=None, quantize: bool = False):
    """The model in eval mode on ``device`` (default: the task's GPU when there is one); int8 runs on the CPU."""
    from shardlake.models.tabular import model_from_bytes

    if quantize:
        from shardlake.quantize import quantize_dynamic_int8

        # quantize_dynamic produces CPU kernels only: a quantised model scores on the CPU even beside a GPU.
        return quantize_dynamic_int8(model_from_bytes(spec, weights, "cpu")), _cpu()
    device = device or task_device()
    return model_from_bytes(spec, weights, device), device


def _cpu():
    import torch

    return torch.device("cpu")


def arrow_features(batch, spec: ModelSpec) -> dict:
    """The spec's feature columns of an Arrow record batch, in the forms ``encode`` takes cheapest.

    Numeric columns become float32 arrays (nulls as NaN) without pandas; string columns become
    pandas Categoricals via Arrow's dictionary encoding, so ``encode`` maps each distinct value
    once instead of building a Python string per row. The transform itself stays ``encode``'s,
    the one training used.
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    features = {}
    for name in spec.numeric:
        column = batch.column(name)
        kind = column.type
        numeric = pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_boolean(kind)
        features[name] = (pc.cast(column, pa.float32(), safe=False).to_numpy(zero_copy_only=False) if numeric
                          else column.to_pandas())
    for name in spec.categorical:
        column = batch.column(name)
        features[name] = (column.dictionary_encode().to_pandas() if pa.types.is_string(column.type)
                          or pa.types.is_large_string(column.type) else column.to_pandas())
    return features


def score_frame(model, spec: ModelSpec, frame, device, threshold: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """(prediction, score) for one batch of rows: encode with the model's spec, one forward pass as tensors.

    ``frame``: a pandas DataFrame or a mapping of column arrays (e.g. ``arrow_features``).
    """
    import torch

    from shardlake.models.tabular import encode

    numeric, categorical = encode(frame, spec)
    with torch.inference_mode():
        # non_blocking lets the host-to-GPU copy overlap; on the CPU it is a no-op.
        out = model.predict(torch.from_numpy(numeric).to(device, non_blocking=True),
                            torch.from_numpy(categorical).to(device, non_blocking=True)).float().cpu().numpy()
    score = out.astype(np.float64)
    prediction = (out >= threshold).astype(np.int32) if spec.kind == "binary" else score
    return prediction, score


def _task_threads() -> int:
    """CPU threads this task may use: its spark.task.cpus, so parallel tasks do not oversubscribe the cores."""
    from pyspark import TaskContext

    context = TaskContext.get()
    return max(1, context.cpus()) if context is not None else 1


def even_slices(rows: int, batch_size: int) -> list[tuple[int, int]]:
    """(offset, length) pieces of at most ``batch_size`` rows, as even as possible.

    10000 rows in batches of 8192 become 2 x 5000, not 8192 + 1808.
    """
    pieces = max(1, -(-rows // batch_size))
    size = -(-rows // pieces) if rows else 0
    return [(start, min(size, rows - start)) for start in range(0, rows, size)] if rows else []


def _scorer(spec_dict: dict, weights, batch_size: int, passthrough: Sequence[str], threshold: float,
            quantize: bool, fail_on_partition: int | None):
    """The per-partition function: build the model once per task from the broadcast, then score Arrow batches.

    Pass-through columns go back as the same Arrow arrays (no pandas round trip); only feature
    columns are converted.
    """

    def score(batches):
        import pyarrow as pa
        import torch
        from pyspark import TaskContext

        spec = ModelSpec.from_dict(spec_dict)
        model, device = build_scoring_model(spec, weights.value, quantize=quantize)
        if device.type == "cpu":
            torch.set_num_threads(_task_threads())
        prediction_type = pa.int32() if spec.kind == "binary" else pa.float64()
        partition = TaskContext.get().partitionId() if TaskContext.get() is not None else -1
        emitted = 0
        for batch in batches:
            for offset, length in even_slices(batch.num_rows, batch_size):
                part = batch.slice(offset, length)
                prediction, values = score_frame(model, spec, arrow_features(part, spec), device, threshold)
                yield pa.RecordBatch.from_arrays(
                    [part.column(c) for c in passthrough]
                    + [pa.array(prediction, type=prediction_type), pa.array(values, type=pa.float64())],
                    names=[*passthrough, PREDICTION, SCORE])
                emitted += length
                # Test hook: fail after this task has already produced output, i.e. mid-write.
                if fail_on_partition is not None and partition == fail_on_partition and emitted:
                    raise InjectedFailure(f"injected failure in map task of partition {partition} after {emitted} rows")

    return score


@dataclass(frozen=True)
class TabularModel:
    """A trained model that can transform a DataFrame (the Spark ML 'Model' shape)."""

    spec: ModelSpec
    weights: bytes
    model_version: str

    @classmethod
    def load(cls, folder: Folder | str | Path, model_version: str) -> "TabularModel":
        """A saved model's spec and weights from its folder (a local folder or an object store's)."""
        import json

        source = Folder.of(folder)
        spec = ModelSpec.from_dict(json.loads(source.read_text(SPEC_FILE)))
        return cls(spec, source.read_bytes(WEIGHTS_FILE), model_version)

    def transform(self, df: DataFrame, passthrough: Sequence[str], batch_size: int = 8192,
                  threshold: float = 0.5, quantize: bool = False,
                  fail_on_partition: int | None = None) -> DataFrame:
        """Add prediction and score to ``passthrough`` columns; features are read from ``df``.

        Weights travel once per executor as a broadcast; each task builds the model once and scores
        Arrow batches of up to ``batch_size`` rows as tensors (on a GPU when the executor has one;
        on the CPU with int8 weights when ``quantize``). ``fail_on_partition`` makes that
        partition's task raise after its first batch (a test hook).
        """
        features = [*self.spec.numeric, *self.spec.categorical]
        missing = [c for c in features if c not in df.columns]
        if missing:
            raise ValueError(f"cannot score: input lacks feature column(s) {missing}")
        columns = list(dict.fromkeys([*passthrough, *features]))
        schema = T.StructType([df.schema[c] for c in passthrough] + prediction_fields(self.spec.kind))
        weights = df.sparkSession.sparkContext.broadcast(self.weights)
        scorer = _scorer(self.spec.to_dict(), weights, batch_size, passthrough, threshold, quantize, fail_on_partition)
        return df.select(*[F.col(c) for c in columns]).mapInArrow(scorer, schema)


class ModelMismatchError(ValueError):
    """A model folder that no longer holds what its registry card recorded."""


def load_registered(card: Mapping) -> TabularModel:
    """The card's model from its folder, refused when the folder's spec or weights are not the ones recorded.

    The spec carries the feature statistics and the weights are the model: a folder overwritten
    by another run (or by hand) after registration would otherwise score silently with something
    the card does not describe. Cards written before training recorded ``weights_sha256`` are
    checked on the spec only.
    """
    from shardlake.models.tabular import weights_digest

    folder = Folder(card["model_dir"])
    model = TabularModel.load(folder, card["model_version"])
    recorded = card.get("model_spec")
    if recorded is not None and {k: recorded.get(k) for k in model.spec.to_dict()} != model.spec.to_dict():
        raise ModelMismatchError(f"{folder}: the saved model spec differs from the one on the model card of "
                                 f"{card['model_version']}; the folder was changed after registration")
    digest = card.get("weights_sha256")
    if digest is not None and weights_digest(folder) != digest:
        raise ModelMismatchError(f"{folder.file(WEIGHTS_FILE)}: the weights' sha256 differs from the one on the model "
                                 f"card of {card['model_version']}; the folder was changed after registration")
    return model
