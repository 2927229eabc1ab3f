"""Tabular models with categorical embeddings; the feature transform lives inside the model.

Standardisation statistics and category vocabularies are model buffers and spec fields, fitted on
the training split of one table version, so every scorer of a saved model applies exactly the
transform the model was trained with. The architecture is chosen by ``ModelSpec.architecture``
("mlp", or "linear" as a baseline); the task by ``ModelSpec.kind`` ("binary" or "regression").
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from safetensors.torch import save
from torch import nn

from shardlake.folders import Folder

WEIGHTS_FILE = "model.safetensors"
SPEC_FILE = "model_spec.json"
KINDS = ("binary", "regression")
DIGEST_CHUNK = 1 << 20  # bytes hashed at a time: weights files can be far larger than wanted in memory


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to rebuild a model and encode its inputs (JSON-serialisable)."""

    kind: str  # "binary" or "regression"
    numeric: list[str]
    categorical: list[str]
    vocab: dict[str, list]  # each column's values in its own type (str, int, float, bool), as fitted
    mean: dict[str, float]
    std: dict[str, float]
    hidden: list[int] = field(default_factory=lambda: [64, 32])
    embedding_dim: int = 8
    dropout: float = 0.1
    architecture: str = "mlp"
    # Regression targets are learnt standardised (a unit-scale output trains well from a default
    # init whatever the label's unit); predictions are mapped back with these.
    target_mean: float = 0.0
    target_std: float = 1.0

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"model kind must be one of {KINDS}, got {self.kind!r}")
        if self.architecture not in ARCHITECTURES:
            raise ValueError(f"architecture must be one of {sorted(ARCHITECTURES)}, got {self.architecture!r}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping) -> "ModelSpec":
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})


class TabularMLP(nn.Module):
    """MLP over standardised numeric features and embedded categorical ones; returns one output per row.

    Missing numeric values become the training mean (0 after standardisation); unknown categories
    share index 0. ``forward`` gives the raw output (a logit, or a standardised value) that the
    loss sees; ``predict`` gives the probability or the value in the label's unit.
    """

    def __init__(self, spec: ModelSpec):
        super().__init__()
        self.spec = spec
        self.register_buffer("mean", torch.tensor([spec.mean[c] for c in spec.numeric], dtype=torch.float32))
        self.register_buffer("std", torch.tensor([spec.std[c] or 1.0 for c in spec.numeric], dtype=torch.float32))
        self.embeddings = nn.ModuleList(
            nn.Embedding(len(spec.vocab[c]) + 1, spec.embedding_dim) for c in spec.categorical
        )
        width = len(spec.numeric) + spec.embedding_dim * len(spec.categorical)
        layers: list[nn.Module] = []
        for size in self.hidden_sizes(spec):
            layers += [nn.Linear(width, size), nn.ReLU(), nn.Dropout(spec.dropout)]
            width = size
        layers.append(nn.Linear(width, 1))
        self.mlp = nn.Sequential(*layers)

    @staticmethod
    def hidden_sizes(spec: ModelSpec) -> list[int]:
        return list(spec.hidden)

    def forward(self, numeric: torch.Tensor, categorical: torch.Tensor) -> torch.Tensor:
        scaled = torch.nan_to_num((numeric - self.mean) / self.std, nan=0.0, posinf=0.0, neginf=0.0)
        parts = [scaled] + [emb(categorical[:, i]) for i, emb in enumerate(self.embeddings)]
        return self.mlp(torch.cat(parts, dim=1)).squeeze(1)

    def loss_target(self, target: torch.Tensor) -> torch.Tensor:
        """The label in the space ``forward`` predicts (standardised for regression)."""
        if self.spec.kind == "binary":
            return target
        return (target - self.spec.target_mean) / (self.spec.target_std or 1.0)

    def predict(self, numeric: torch.Tensor, categorical: torch.Tensor) -> torch.Tensor:
        """Probability for binary models, the value (in the label's unit) for regression."""
        out = self.forward(numeric, categorical)
        if self.spec.kind == "binary":
            return torch.sigmoid(out)
        return out * (self.spec.target_std or 1.0) + self.spec.target_mean


class TabularLinear(TabularMLP):
    """The same inputs straight into one linear layer: a logistic/linear-regression baseline."""

    @staticmethod
    def hidden_sizes(spec: ModelSpec) -> list[int]:
        return []


ARCHITECTURES: dict[str, type[TabularMLP]] = {"mlp": TabularMLP, "linear": TabularLinear}


def _numeric_values(values) -> np.ndarray:
    """One column as float32 (missing or non-numeric -> NaN); numeric arrays skip pandas."""
    array = values.to_numpy() if isinstance(values, pd.Series) and values.dtype.kind in "iufb" else values
    if isinstance(array, np.ndarray) and array.dtype.kind in "iufb":
        return array.astype(np.float32, copy=False)
    return pd.to_numeric(pd.Series(values), errors="coerce").to_numpy(dtype=np.float32, na_value=np.nan)


def category_codes(values, vocab: Sequence) -> np.ndarray:
    """Index + 1 of each value in ``vocab``; 0 for unknown or missing values.

    Values are compared as Python objects, so the vocabulary must hold them in their own type
    (1 and True, not "1" and "true"); a column with nulls arriving as floats still finds its ints.

    Categoricals (codes + a small dictionary, as the training loader delivers them) map only
    their dictionary; other arrays go through one hash lookup, both far cheaper than building
    Python strings per row.
    """
    index = pd.Index(list(vocab), dtype="object")
    if isinstance(values, pd.Series) and isinstance(values.dtype, pd.CategoricalDtype):
        values = values.array
    if isinstance(values, pd.Categorical):
        lookup = np.append(index.get_indexer(values.categories.astype("object")), -1)  # code -1 (missing) -> -1
        return lookup[values.codes].astype(np.int64) + 1
    return index.get_indexer(pd.Index(np.asarray(values, dtype="object"))).astype(np.int64) + 1


def encode(frame: Mapping[str, np.ndarray] | pd.DataFrame, spec: ModelSpec) -> tuple[np.ndarray, np.ndarray]:
    """Columns of a batch to (float32 numeric matrix, int64 category indices), vectorised."""
    n = len(frame[spec.numeric[0]] if spec.numeric else frame[spec.categorical[0]])
    numeric = np.empty((n, len(spec.numeric)), dtype=np.float32)
    for i, column in enumerate(spec.numeric):
        numeric[:, i] = _numeric_values(frame[column])
    categorical = np.zeros((n, len(spec.categorical)), dtype=np.int64)
    for i, column in enumerate(spec.categorical):
        categorical[:, i] = category_codes(frame[column], spec.vocab[column])
    return numeric, categorical


def build_model(spec: ModelSpec, seed: int | None = None) -> TabularMLP:
    """The architecture the spec names, initialised from ``seed`` when given."""
    if seed is not None:
        torch.manual_seed(seed)
    return ARCHITECTURES[spec.architecture](spec)


def save_model(model: TabularMLP, folder: Folder | str | Path) -> None:
    """Weights as safetensors plus the spec as JSON, each written whole to the folder (local or on an
    object store): loading never executes pickled code."""
    target = Folder.of(folder).make()
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    target.write_bytes(WEIGHTS_FILE, save(state))
    target.write_text(SPEC_FILE, json.dumps(model.spec.to_dict(), indent=2, sort_keys=True))


def load_model(folder: Folder | str | Path, device: str | torch.device = "cpu") -> TabularMLP:
    """Rebuild a saved model from its spec and safetensors weights, in eval mode."""
    source = Folder.of(folder)
    spec = ModelSpec.from_dict(json.loads(source.read_text(SPEC_FILE)))
    return model_from_bytes(spec, source.read_bytes(WEIGHTS_FILE), device)


def model_from_bytes(spec: ModelSpec, weights: bytes, device: str | torch.device = "cpu") -> TabularMLP:
    """Rebuild a model from its spec and serialized safetensors weights (e.g. a Spark broadcast)."""
    from safetensors.torch import load

    model = build_model(spec)
    model.load_state_dict(load(weights))
    return model.to(device).eval()


def weights_digest(folder: Folder | str | Path) -> str:
    """SHA-256 (hex) of a saved model's weights file: cards record it so a scorer can tell that the
    weights it loads are the ones that were trained and evaluated."""
    digest = hashlib.sha256()
    with Folder.of(folder).open(WEIGHTS_FILE) as weights:
        for chunk in iter(lambda: weights.read(DIGEST_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def device_for(local_rank: int, cuda_devices: int) -> torch.device:
    """Local rank -> its CUDA device (ranks share round-robin when there are more ranks than GPUs), or CPU."""
    if cuda_devices > 0:
        return torch.device("cuda", local_rank % cuda_devices)
    return torch.device("cpu")


def default_device(local_rank: int = 0) -> torch.device:
    """One CUDA device per local rank when GPUs exist, else the CPU: the same code path either way."""
    return device_for(local_rank, torch.cuda.device_count() if torch.cuda.is_available() else 0)


def feature_columns(spec: ModelSpec) -> Sequence[str]:
    return [*spec.numeric, *spec.categorical]
