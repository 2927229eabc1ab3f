"""Which row of a key stands when a batch meets the table: the rule ``mark_duplicates`` uses in a batch.

Inside one batch, ``clean.mark_duplicates`` keeps a key's newest row by ``order_by`` and
quarantines rows that nothing orders against each other. Against the table the same questions
get the same answers, so a row's fate does not depend on whether it arrived with the table's row
or in a later run: a strictly newer incoming row replaces the table's; a strictly older one is
``superseded``; with no order between them (no ``order_by``, or equal values) the policy decides:
``quarantine`` keeps the table's row and quarantines the incoming one as a ``conflict``,
``keep_one`` keeps the smaller content hash, ``replace`` lets the later run win.
"""
from __future__ import annotations

import operator
from collections.abc import Mapping, Sequence
from functools import reduce

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from shardlake.transforms.clean import CONFLICT, ROW_HASH, SHARD, SPLIT, SUPERSEDED

NEW, SAME, UPDATE = "new", "same", "update"
AGAINST = "_against_table"


def _tie_rule(on_conflict: str) -> str:
    return {"keep_one": f"s.{ROW_HASH} < t.{ROW_HASH}", "replace": "true", "quarantine": "false"}[on_conflict]


def incoming_wins(order_by: str | None, on_conflict: str) -> str:
    """SQL on ``s`` (incoming) and ``t`` (table): the incoming row replaces the table's row of its key.

    Meant for rows whose contents differ; used both as the MERGE's update condition and to
    classify the batch before the MERGE, so the two cannot disagree.
    """
    tie = _tie_rule(on_conflict)
    if not order_by:
        return f"({tie})"
    o = f"`{order_by}`"
    newer = f"(s.{o} > t.{o} OR (t.{o} IS NULL AND s.{o} IS NOT NULL))"
    return f"({newer} OR (s.{o} <=> t.{o} AND {tie}))"


def _incoming_older(order_by: str | None) -> str:
    if not order_by:
        return "false"
    o = f"`{order_by}`"
    return f"(s.{o} < t.{o} OR (s.{o} IS NULL AND t.{o} IS NOT NULL))"


def within(ranges: Mapping[str, tuple[object, object]], table: str | None = None,
           types: Mapping[str, T.DataType] | None = None) -> Column | None:
    """Rows whose ``ranges`` columns lie inside a batch's (min, max): the only rows its keys can match.

    The columns are key columns (``cluster_by``), so a row of the table with one of the batch's
    keys has its values inside the batch's range. As a filter on the table (``table``: its alias
    in a MERGE) it lets Delta skip every file whose min/max statistics fall outside; ``types``
    (the columns' types) make the bounds literals of the column's own type, so the comparison
    is on the bare column, as file skipping needs. None when there is nothing to prune by; a
    batch without rows matches nothing.
    """
    if not ranges:
        return None
    types = types or {}

    def bound(column: str, value: object) -> Column:
        literal = F.lit(value)
        return literal.cast(types[column]) if column in types else literal

    name = (lambda c: f"{table}.`{c}`") if table else (lambda c: f"`{c}`")
    parts = [F.col(name(c)).between(bound(c, lo), bound(c, hi)) if lo is not None else F.lit(False)
             for c, (lo, hi) in ranges.items()]
    return reduce(operator.and_, parts)


def against_table(incoming: DataFrame, table: DataFrame, key: Sequence[str], order_by: str | None,
                  on_conflict: str, ranges: Mapping[str, tuple[object, object]] | None = None) -> DataFrame:
    """``incoming`` clean rows with ``_against_table``: new, same, update, superseded or conflict.

    ``table`` is the clean table (one version). Rows whose key the table lacks are ``new``; rows
    identical to the table's (same content hash) are ``same`` and need no write; the others are
    decided by ``incoming_wins``: ``update``, or, losing, ``superseded`` when strictly older and
    ``conflict`` when nothing orders them. With ``ranges`` (see ``within``) only the table's
    rows inside the batch's range are read.
    """
    wanted = [*key, ROW_HASH, *([order_by] if order_by else []), SHARD, SPLIT]
    pruned = within(ranges or {}, types={f.name: f.dataType for f in table.schema.fields})
    if pruned is not None:
        table = table.where(pruned)
    existing = table.select(*dict.fromkeys(wanted)).withColumn("_in_table", F.lit(True))
    on = [F.col(f"s.{c}").eqNullSafe(F.col(f"t.{c}")) for c in [SPLIT, SHARD, *key]]
    joined = incoming.alias("s").join(existing.alias("t"), on=on, how="left")
    verdict = (F.when(F.col("t._in_table").isNull(), F.lit(NEW))
               .when(F.col(f"s.{ROW_HASH}") == F.col(f"t.{ROW_HASH}"), F.lit(SAME))
               .when(F.expr(incoming_wins(order_by, on_conflict)), F.lit(UPDATE))
               .when(F.expr(_incoming_older(order_by)), F.lit(SUPERSEDED))
               .otherwise(F.lit(CONFLICT if on_conflict == "quarantine" else SUPERSEDED)))
    return joined.select("s.*", verdict.alias(AGAINST))
