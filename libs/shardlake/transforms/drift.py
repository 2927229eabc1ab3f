"""Model drift, like for like: the figures of one scope of the reduce stage against the model card.

Two labelled checks, on two different populations:

- **sanity** (on the model's own training version only): its test split is the card's test set,
  so the reduce stage must reproduce the card's test metrics up to rounding (the histogram AUC's
  bucket width). A failure means the card, the table version or the scoring path is wrong, not
  that the world changed.
- **new rows** (rows the model never saw: keys or contents added after its training version):
  worse than the card's test metrics by more than the allowed change is drift. Only worse counts
  (a better figure is not an alarm), and the allowed change grows for small samples: it is the
  larger of the configured tolerance and ``z`` standard errors of the metric at that row count.

Training rows are in neither: a model's figures on the rows it was fitted to say nothing about
how it does now. The arithmetic is plain Python on the summary rows (a few numbers per scope).
"""
from __future__ import annotations

import math
from collections.abc import Mapping

# Metrics compared with the card: whether higher is better, and how the tolerance applies
# (rates in [0, 1] move by an absolute amount; errors carry the label's unit, so relatively).
METRICS: dict[str, dict[str, tuple[bool, str]]] = {
    "binary": {"auc": (True, "absolute"), "accuracy": (True, "absolute")},
    "regression": {"rmse": (False, "relative"), "mae": (False, "relative")},
}
# What the sanity check allows: the histogram AUC's rounding, float noise for the others.
SANITY_ALLOWED = {"absolute": 0.005, "relative": 0.005}


def standard_error(name: str, record: Mapping) -> float:
    """Standard error of metric ``name`` over a scope's labelled rows (``record``: a summary row).

    AUC: Hanley and McNeil (1982); accuracy: binomial; RMSE: rmse / sqrt(2n) (normal errors);
    MAE: the standard deviation of the absolute error over sqrt(n). NaN without labelled rows.
    """
    n = record.get("labelled") or 0
    value = record.get(name)
    if n < 2 or value is None or math.isnan(value):
        return float("nan")
    if name == "auc":
        positives = round((record.get("label_rate") or 0.0) * n)
        negatives = n - positives
        if not positives or not negatives:
            return float("nan")
        q1, q2 = value / (2 - value), 2 * value * value / (1 + value)
        variance = (value * (1 - value) + (positives - 1) * (q1 - value ** 2)
                    + (negatives - 1) * (q2 - value ** 2)) / (positives * negatives)
        return math.sqrt(max(variance, 0.0))
    if name == "accuracy":
        return math.sqrt(value * (1 - value) / n)
    if name == "rmse":
        return value / math.sqrt(2 * n)
    if name == "mae":
        rmse = record.get("rmse") or 0.0
        return math.sqrt(max(rmse * rmse - value * value, 0.0) / n)
    raise ValueError(f"no standard error for metric {name!r}")


def _worse_by(name: str, kind: str, now: float, at_test: float) -> float:
    """How much worse ``now`` is than ``at_test`` (negative when better)."""
    higher_is_better, _ = METRICS[kind][name]
    return at_test - now if higher_is_better else now - at_test


def compare_new_rows(record: Mapping, test_metrics: Mapping, tolerance: float, kind: str, z: float) -> dict:
    """Each card metric on the rows new to the model: now, at test, how much worse, the allowed change, drifted.

    Allowed: max(tolerance (absolute for rates, relative to the test value for errors), z x the
    metric's standard error at this row count). A NaN on either side is reported, never flagged.
    """
    compared = {}
    for name, (_, mode) in METRICS[kind].items():
        now, at_test = record.get(name), test_metrics.get(name)
        if now is None or at_test is None:
            continue
        error = standard_error(name, record)
        configured = tolerance if mode == "absolute" else tolerance * abs(at_test)
        allowed = max(configured, z * error) if not math.isnan(error) else configured
        worse = _worse_by(name, kind, now, at_test)
        compared[name] = {"now": now, "at_test": at_test, "worse_by": worse, "allowed": allowed,
                          "standard_error": error, "rows": int(record.get("labelled") or 0),
                          "drifted": bool(worse > allowed)}
    return compared


def sanity_check(record: Mapping, test_metrics: Mapping, kind: str) -> dict:
    """Each card metric on the training version's test split: now, on the card, the difference, failed."""
    checked = {}
    for name, (_, mode) in METRICS[kind].items():
        now, at_test = record.get(name), test_metrics.get(name)
        if now is None or at_test is None:
            continue
        allowed = SANITY_ALLOWED[mode] * (1.0 if mode == "absolute" else max(abs(at_test), 1e-12))
        difference = now - at_test
        both_undefined = math.isnan(now) and math.isnan(at_test)  # e.g. AUC of a one-class test split
        checked[name] = {"now": now, "at_test": at_test, "difference": difference, "allowed": allowed,
                         "failed": bool(not both_undefined and not abs(difference) <= allowed)}
    return checked


def _shares(counts) -> list[float]:
    total = float(sum(counts))
    return [c / total for c in counts] if total else [0.0] * len(counts)


def psi(expected, actual, floor: float = 1e-4) -> float:
    """Population stability index of binned counts: sum over bins of (a - e) ln(a / e), shares floored
    (an empty bin on one side would otherwise make it infinite)."""
    e = [max(x, floor) for x in _shares(expected)]
    a = [max(x, floor) for x in _shares(actual)]
    return float(sum((ai - ei) * math.log(ai / ei) for ei, ai in zip(e, a)))


def ks_binned(expected, actual) -> float:
    """Kolmogorov-Smirnov distance of two binned distributions over ordered bins: the largest CDF gap."""
    gap, ce, ca = 0.0, 0.0, 0.0
    for ei, ai in zip(_shares(expected), _shares(actual)):
        ce, ca = ce + ei, ca + ai
        gap = max(gap, abs(ce - ca))
    return gap


def compare_distributions(reference: Mapping, now: Mapping[str, list[int]], psi_threshold: float,
                          ks_alpha_c: float = 1.36) -> dict:
    """Each profiled column (and the score) now against the training reference: PSI, KS, rows, drifted.

    ``reference``: {column: {"counts": [...], "ordered": bool}} (index 0: missing values).
    PSI above ``psi_threshold`` plus its small-sample bias ((bins - 1) (1/n + 1/m)) is drift; so
    is, for ordered (numeric) bins, a KS distance above the two-sample critical value
    ``ks_alpha_c`` sqrt((n + m) / (n m)) (1.36: 5%) and above 0.05, so that a huge sample's
    negligible shift is not an alarm.
    """
    compared = {}
    for column, ref in reference.items():
        actual, expected = now.get(column), ref["counts"]
        n, m = sum(expected), sum(actual or [])
        if not n or not m:
            continue
        value = psi(expected, actual)
        allowed_psi = psi_threshold + (len(expected) - 1) * (1 / n + 1 / m)
        check = {"psi": value, "psi_allowed": allowed_psi, "rows": m, "drifted": value > allowed_psi}
        if ref.get("ordered"):
            ks = ks_binned(expected[1:], actual[1:])  # missing values are not on the axis
            allowed_ks = max(0.05, ks_alpha_c * math.sqrt((n + m) / (n * m)))
            check.update(ks=ks, ks_allowed=allowed_ks, drifted=check["drifted"] or ks > allowed_ks)
        compared[column] = check
    return compared
