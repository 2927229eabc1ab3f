"""The training split's binned distributions, recorded on the model card for label-free drift.

Computed once per trained model on a seeded sample of the training split: the numeric features
and the score are cut at their deciles (approximate quantiles), the categorical features at the
model's vocabulary. Inference bins the rows new to the model the same way
(``transforms.profile``) and compares (``transforms.drift.compare_distributions``).
"""
from __future__ import annotations

from pyspark.sql import DataFrame

from shardlake.predictions import SCORE
from shardlake.scoring import TabularModel
from shardlake.transforms import profile as P

DECILES = [i / 10 for i in range(1, 10)]


def binning(model: TabularModel, rows: DataFrame) -> tuple[dict[str, list[float]], dict[str, list[str]]]:
    """Interior edges of each numeric feature and of the score (deciles of ``rows``, scored), categories of each
    categorical feature (the model's vocabulary)."""
    numeric = list(model.spec.numeric)
    quantiles = rows.approxQuantile([*numeric, SCORE], DECILES, 0.001)
    edges = {c: sorted({float(q) for q in qs if q is not None}) for c, qs in zip([*numeric, SCORE], quantiles)}
    return edges, {c: list(model.spec.vocab.get(c, [])) for c in model.spec.categorical}


def training_reference(model: TabularModel, training: DataFrame, total: int, batch_size: int, sample_rows: int,
                       seed: int = 17) -> dict:
    """The card's ``reference``: {column: {"edges" or "categories", "counts", "ordered"}} over a sample of at
    most about ``sample_rows`` of the ``total`` training rows, scored by ``model``.

    ``total`` comes from the caller (the Delta log knows it) so that sizing the sample costs no scan.
    """
    if not total:
        return {}
    sample = training.sample(fraction=min(1.0, 1.2 * sample_rows / total), seed=seed).limit(sample_rows)
    features = [*model.spec.numeric, *model.spec.categorical]
    scored = model.transform(sample, features, batch_size).cache()
    try:
        numeric, categorical = binning(model, scored)
        counted = P.bin_counts(scored, numeric, categorical).collect()
    finally:
        scored.unpersist()
    sizes = {**{c: len(e) + 1 for c, e in numeric.items()}, **{c: len(v) + 1 for c, v in categorical.items()}}
    vectors = P.count_vectors(counted, sizes)
    reference = {c: {"edges": e, "counts": vectors[c], "ordered": True} for c, e in numeric.items()}
    reference.update({c: {"categories": v, "counts": vectors[c], "ordered": False} for c, v in categorical.items()})
    return reference


def counts_now(rows: DataFrame, reference: dict) -> dict[str, list[int]]:
    """``rows`` (features and score) binned as ``reference`` was: one count list per column."""
    numeric = {c: r["edges"] for c, r in reference.items() if "edges" in r and c in rows.columns}
    categorical = {c: r["categories"] for c, r in reference.items() if "categories" in r and c in rows.columns}
    sizes = {c: len(r["counts"]) - 1 for c, r in reference.items()}
    return P.count_vectors(P.bin_counts(rows, numeric, categorical).collect(), sizes)

