"""Dynamic int8 quantisation of a tabular model for CPU inference, and what it costs and gains.

``quantize_dynamic`` stores the Linear layers' weights as int8 and quantises activations per batch
on the fly: no calibration data, CPU kernels only. Embeddings and the standardisation buffers stay
float, so the feature transform is untouched. Quantised predictions are a different model's
output: they are written under the model version plus ``QUANTIZED_SUFFIX``.
"""
from __future__ import annotations

import time
import warnings
from collections.abc import Callable

import numpy as np
import pandas as pd

from shardlake.models.tabular import ModelSpec

QUANTIZED_SUFFIX = "+int8"


def scored_version(model_version: str, quantize: bool) -> str:
    """The model version predictions are written under: the quantised variant is its own version."""
    return model_version + QUANTIZED_SUFFIX if quantize else model_version


def quantize_dynamic_int8(model):
    """A copy of ``model`` (on the CPU, eval mode) with int8 dynamic quantisation of its Linear layers."""
    import copy

    import torch
    from torch import nn

    with warnings.catch_warnings():
        # torch.ao.quantization is deprecated in favour of torchao, which this stack does not ship;
        # the eager dynamic API still works in torch 2.13.
        warnings.simplefilter("ignore")
        from torch.ao.quantization import quantize_dynamic

        return quantize_dynamic(copy.deepcopy(model).cpu().eval(), {nn.Linear}, dtype=torch.qint8)


def _timed_scores(predict: Callable[[pd.DataFrame], np.ndarray], frame: pd.DataFrame, batch_size: int,
                  repeat: int) -> tuple[np.ndarray, float]:
    """Scores of every row, and the best rows/s over ``repeat`` passes (the least disturbed one)."""
    best = 0.0
    scores = np.empty(0)
    for _ in range(repeat):
        started = time.perf_counter()
        scores = np.concatenate([predict(frame.iloc[s:s + batch_size]) for s in range(0, len(frame), batch_size)])
        best = max(best, len(frame) / max(time.perf_counter() - started, 1e-9))
    return scores, best


def compare(spec: ModelSpec, weights: bytes, frame: pd.DataFrame, label: str | None, batch_size: int = 8192,
            threads: int = 1, repeat: int = 3) -> dict:
    """Float against int8 on the same rows, in this process on the CPU with ``threads`` threads.

    Returns the score difference, each model's metrics (when ``label`` is given) and rows/s, and
    their changes. ``threads`` should match what one Spark task uses, so the speed change is the
    map stage's.
    """
    import torch

    from shardlake.scoring import build_scoring_model, score_frame
    from shardlake.training.metrics import metrics_for

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        result: dict = {"rows": int(len(frame)), "threads": threads}
        outputs = {}
        for name, quantize in (("float", False), ("int8", True)):
            model, device = build_scoring_model(spec, weights, device=torch.device("cpu"), quantize=quantize)
            scores, speed = _timed_scores(lambda part: score_frame(model, spec, part, device)[1], frame, batch_size,
                                          repeat)
            outputs[name] = scores
            result[name] = {"rows_per_s": round(speed, 1)}
            if label is not None and len(frame):
                labelled = frame[label].notna().to_numpy()
                metrics = metrics_for(spec.kind, frame[label].to_numpy(dtype=np.float64)[labelled], scores[labelled])
                result[name].update({k: v for k, v in metrics.items() if k != "rows"})
    finally:
        torch.set_num_threads(previous)
    difference = np.abs(outputs["float"] - outputs["int8"])
    result["max_abs_score_diff"] = float(difference.max()) if len(difference) else 0.0
    result["mean_abs_score_diff"] = float(difference.mean()) if len(difference) else 0.0
    result["speedup"] = round(result["int8"]["rows_per_s"] / max(result["float"]["rows_per_s"], 1e-9), 3)
    result["metric_change"] = {k: result["int8"][k] - v for k, v in result["float"].items()
                               if k != "rows_per_s" and k in result["int8"]}
    return result
