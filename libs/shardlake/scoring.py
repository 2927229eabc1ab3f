"""The map side of batch inference: score DataFrame partitions with a saved model over Arrow batches."""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from shardlake.models.tabular import SPEC_FILE, WEIGHTS_FILE, ModelSpec

PREDICTION = "prediction"
SCORE = "score"


def prediction_fields(kind: str) -> list[T.StructField]:
    """Output columns the map stage adds: a class and its probability, or a value."""
    if kind == "binary":
        return [T.StructField(PREDICTION, T.IntegerType()), T.StructField(SCORE, T.DoubleType())]
    return [T.StructField(PREDICTION, T.DoubleType()), T.StructField(SCORE, T.DoubleType())]


def _scorer(spec_dict: dict, weights, batch_size: int, passthrough: Sequence[str], threshold: float):
    """The per-partition function: load the model once per task, then score Arrow batches."""

    def score(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        import torch

        from shardlake.models.tabular import default_device, encode, model_from_bytes

        spec = ModelSpec.from_dict(spec_dict)
        device = default_device()
        model = model_from_bytes(spec, weights.value, device)
        with torch.inference_mode():
            for frame in batches:
                for start in range(0, len(frame), batch_size):
                    part = frame.iloc[start:start + batch_size]
                    numeric, categorical = encode(part, spec)
                    out = model.predict(torch.from_numpy(numeric).to(device),
                                        torch.from_numpy(categorical).to(device)).float().cpu().numpy()
                    result = part[list(passthrough)].reset_index(drop=True)
                    if spec.kind == "binary":
                        result[PREDICTION] = (out >= threshold).astype(np.int32)
                    else:
                        result[PREDICTION] = out.astype(np.float64)
                    result[SCORE] = out.astype(np.float64)
                    yield result

    return score


@dataclass(frozen=True)
class TabularModel:
    """A trained model that can transform a DataFrame (the Spark ML 'Model' shape)."""

    spec: ModelSpec
    weights: bytes
    model_version: str

    @classmethod
    def load(cls, folder: Path, model_version: str) -> "TabularModel":
        import json

        spec = ModelSpec.from_dict(json.loads((folder / SPEC_FILE).read_text()))
        return cls(spec, (folder / WEIGHTS_FILE).read_bytes(), model_version)

    def transform(self, df: DataFrame, passthrough: Sequence[str], batch_size: int = 8192,
                  threshold: float = 0.5) -> DataFrame:
        """Add prediction and score to ``passthrough`` columns; features are read from ``df``.

        Weights travel once per executor as a broadcast; each task builds the model once and scores
        Arrow batches of ``batch_size`` rows as tensors (on a GPU when the executor has one).
        """
        features = [*self.spec.numeric, *self.spec.categorical]
        missing = [c for c in features if c not in df.columns]
        if missing:
            raise ValueError(f"cannot score: input lacks feature column(s) {missing}")
        columns = list(dict.fromkeys([*passthrough, *features]))
        schema = T.StructType([df.schema[c] for c in passthrough] + prediction_fields(self.spec.kind))
        weights = df.sparkSession.sparkContext.broadcast(self.weights)
        return df.select(*[F.col(c) for c in columns]).mapInPandas(
            _scorer(self.spec.to_dict(), weights, batch_size, passthrough, threshold), schema)
