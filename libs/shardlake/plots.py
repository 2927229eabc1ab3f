"""PNG plots written next to a run, for the results a person would rather look at.

A plot's location is a local path or an object-store URL (a lake on S3 keeps its plots there too).
"""
from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)

from shardlake.storage import is_url, store_for  # noqa: E402


def _save(fig, path: str | Path) -> str | Path:
    """Write the figure as a PNG to ``path`` (a file, or an object written whole) and close it."""
    if is_url(str(path)):
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=100)
        store_for(str(path)).write_bytes(str(path), buffer.getvalue())
    else:
        fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def training_curve(history: Sequence[Mapping], metric: str, path: str | Path, title: str) -> str | Path:
    """Train loss and the validation metric per epoch, side by side."""
    epochs = [h["epoch"] + 1 for h in history]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    left.plot(epochs, [h["train_loss"] for h in history], marker="o")
    left.set(xlabel="epoch", ylabel="train loss", title="training loss")
    right.plot(epochs, [h["validation"].get(metric, float("nan")) for h in history], marker="o", color="tab:green")
    right.set(xlabel="epoch", ylabel=f"validation {metric}", title=f"validation {metric}")
    for axis in (left, right):
        axis.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, path)


def score_histogram(scores_by_label: Mapping[str, Sequence[float]], path: str | Path, title: str) -> str | Path:
    """Distribution of predicted scores, one series per label value (or one for unlabeled data)."""
    fig, axis = plt.subplots(figsize=(6, 4))
    for name, scores in scores_by_label.items():
        axis.hist(scores, bins=40, alpha=0.6, label=name, density=True)
    axis.set(xlabel="score", ylabel="density", title=title)
    axis.legend()
    fig.tight_layout()
    return _save(fig, path)


def binned_histogram(edges: Sequence[float], counts_by_label: Mapping[str, Sequence[float]], path: str | Path,
                     title: str, xlabel: str = "score", threshold: float | None = None) -> str | Path:
    """Distribution from counts already binned (e.g. aggregated in Spark over every row), one series per label.

    Each series is drawn as a density, so a rare label's shape stays visible beside a common one;
    ``threshold`` (the decision threshold) is drawn as a dashed line.
    """
    import numpy as np

    widths = np.diff(np.asarray(edges, dtype=float))
    fig, axis = plt.subplots(figsize=(6, 4))
    for name, counts in counts_by_label.items():
        counts = np.asarray(counts, dtype=float)
        if counts.sum() > 0:
            axis.stairs(counts / (counts.sum() * widths), edges, label=f"{name} (n={int(counts.sum())})",
                        fill=True, alpha=0.5)
    if threshold is not None:
        axis.axvline(threshold, linestyle="--", color="grey", label=f"threshold {threshold:g}")
    axis.set(xlabel=xlabel, ylabel="density", title=title)
    axis.legend()
    fig.tight_layout()
    return _save(fig, path)


def score_series(sample, label: str | None, kind: str, score: str = "score") -> dict:
    """The score plot's series from a pandas sample: scores by label value (binary), or predictions
    beside labels (regression), or all scores when there is no label."""
    if label is None:
        return {"all rows": sample[score]}
    if kind == "binary":
        labelled = sample[sample[label].notna()]
        return {f"{label}={int(v)}": labelled.loc[labelled[label] == v, score]
                for v in sorted(labelled[label].unique())}
    return {"prediction": sample[score], f"actual {label}": sample[label].dropna()}
