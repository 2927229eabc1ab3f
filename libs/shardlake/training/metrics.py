"""Model metrics on plain arrays (numpy), the same on every rank and in every stage."""
from __future__ import annotations

import numpy as np


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve by the rank statistic (ties get average ranks)."""
    labels = np.asarray(labels, dtype=np.float64)
    positives = labels.sum()
    negatives = len(labels) - positives
    if positives == 0 or negatives == 0:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    sorted_scores = np.asarray(scores)[order]
    ranks = np.empty(len(scores), dtype=np.float64)
    # Average ranks over runs of equal scores.
    _, first, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
    avg = first + (counts + 1) / 2.0
    ranks[order] = np.repeat(avg, counts)
    return float((ranks[labels == 1].sum() - positives * (positives + 1) / 2) / (positives * negatives))


def binary_metrics(labels: np.ndarray, probabilities: np.ndarray, threshold: float = 0.5) -> dict[str, float]:
    """Accuracy, precision, recall, AUC and log loss of probabilities against 0/1 labels."""
    labels = np.asarray(labels, dtype=np.float64)
    probabilities = np.clip(np.asarray(probabilities, dtype=np.float64), 1e-7, 1 - 1e-7)
    predicted = probabilities >= threshold
    tp = float(np.sum(predicted & (labels == 1)))
    fp = float(np.sum(predicted & (labels == 0)))
    fn = float(np.sum(~predicted & (labels == 1)))
    return {
        "rows": float(len(labels)),
        "accuracy": float(np.mean(predicted == (labels == 1))) if len(labels) else float("nan"),
        "precision": tp / (tp + fp) if tp + fp else 0.0,
        "recall": tp / (tp + fn) if tp + fn else 0.0,
        "auc": auc(labels, probabilities),
        "log_loss": float(-np.mean(labels * np.log(probabilities) + (1 - labels) * np.log(1 - probabilities))),
    }


def regression_metrics(labels: np.ndarray, predictions: np.ndarray) -> dict[str, float]:
    """RMSE and MAE."""
    error = np.asarray(predictions, dtype=np.float64) - np.asarray(labels, dtype=np.float64)
    return {"rows": float(len(error)), "rmse": float(np.sqrt(np.mean(error ** 2))), "mae": float(np.mean(np.abs(error)))}


def metrics_for(kind: str, labels: np.ndarray, outputs: np.ndarray) -> dict[str, float]:
    return binary_metrics(labels, outputs) if kind == "binary" else regression_metrics(labels, outputs)


def primary_metric(kind: str) -> tuple[str, bool]:
    """The metric early stopping and promotion use, and whether higher is better."""
    return ("auc", True) if kind == "binary" else ("rmse", False)
