"""Delta table writes and reads with the guarantees jobs rely on: idempotent, versioned, exact."""
from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from contextlib import contextmanager
from typing import Iterator

from delta.tables import DeltaTable
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T


class SchemaChangeError(ValueError):
    """Incoming data whose schema differs from the table's, with evolution not allowed."""


def table_exists(spark: SparkSession, path: str) -> bool:
    return DeltaTable.isDeltaTable(spark, path)


def latest_version(spark: SparkSession, path: str) -> int:
    """The newest version of the Delta table at ``path``."""
    return DeltaTable.forPath(spark, path).history(1).select("version").first()[0]


def read_version(spark: SparkSession, path: str, version: int | None = None) -> DataFrame:
    """The table as of ``version`` (latest when None)."""
    reader = spark.read.format("delta")
    if version is not None:
        reader = reader.option("versionAsOf", version)
    return reader.load(path)


def commit_metrics(spark: SparkSession, path: str, version: int) -> dict[str, str]:
    """operationMetrics of one commit (e.g. numSourceRows of a MERGE)."""
    row = DeltaTable.forPath(spark, path).history().where(F.col("version") == version).select("operationMetrics").first()
    return dict(row[0] or {}) if row else {}


def _schema_diff(existing: T.StructType, incoming: T.StructType) -> list[str]:
    have = {f.name: f.dataType.simpleString() for f in existing.fields}
    new = {f.name: f.dataType.simpleString() for f in incoming.fields}
    changes = [f"missing column {n}" for n in have if n not in new]
    changes += [f"new column {n} ({t})" for n, t in new.items() if n not in have]
    changes += [f"column {n}: {have[n]} -> {t}" for n, t in new.items() if n in have and have[n] != t]
    return changes


def ensure_table(
    spark: SparkSession,
    path: str,
    schema: T.StructType,
    partition_by: Sequence[str] = (),
    constraints: Mapping[str, str] | None = None,
    allow_evolution: bool = False,
) -> None:
    """Create the table if missing (with CHECK constraints); refuse an incompatible schema otherwise."""
    if table_exists(spark, path):
        existing = DeltaTable.forPath(spark, path).toDF().schema
        changes = _schema_diff(existing, schema)
        if changes and not allow_evolution:
            raise SchemaChangeError(
                f"{path}: incoming schema differs from the table: {'; '.join(changes)}. "
                "Set allow_schema_evolution: true in the dataset config to accept it."
            )
        return
    builder = DeltaTable.createIfNotExists(spark).location(path).addColumns(schema)
    if partition_by:
        builder = builder.partitionedBy(*partition_by)
    builder.execute()
    for name, expression in (constraints or {}).items():
        spark.sql(f"ALTER TABLE delta.`{path}` ADD CONSTRAINT {name} CHECK ({expression})")


@contextmanager
def commit_metadata(spark: SparkSession, metadata: Mapping[str, object]) -> Iterator[None]:
    """Attach JSON metadata (run id, counts) to the Delta commits made inside the block."""
    key = "spark.databricks.delta.commitInfo.userMetadata"
    previous = spark.conf.get(key, None)
    spark.conf.set(key, json.dumps(metadata, sort_keys=True, default=str))
    try:
        yield
    finally:
        if previous is None:
            spark.conf.unset(key)
        else:
            spark.conf.set(key, previous)


def merge_by_key(
    spark: SparkSession,
    path: str,
    source: DataFrame,
    key: Sequence[str],
    prune_on: Sequence[str] = (),
    changed_when: str | None = None,
    update: bool = True,
) -> int:
    """MERGE ``source`` into the table on ``key``: insert new keys, update changed rows, never duplicate.

    ``prune_on`` lists partition columns that are functions of the key, added to the condition so
    Delta touches only the partitions the source hits. ``changed_when`` (SQL on t./s.) limits
    updates to rows whose content differs, so a re-run rewrites nothing. Returns the new version.
    """
    condition = " AND ".join(f"t.`{c}` <=> s.`{c}`" for c in [*prune_on, *key])
    merge = DeltaTable.forPath(spark, path).alias("t").merge(source.alias("s"), condition)
    if update:
        merge = merge.whenMatchedUpdateAll(condition=changed_when)
    merge.whenNotMatchedInsertAll().execute()
    return latest_version(spark, path)


def snapshot_files(path: str, version: int, partition_filters: Sequence[tuple[str, str, str]] | None = None) -> list[str]:
    """Exact data files of one table version (optionally one partition), via the Delta log.

    A Delta folder also holds files that later versions removed (until VACUUM), so readers such as
    Petastorm must get this list, never the bare folder.
    """
    from deltalake import DeltaTable as RsDeltaTable

    table = RsDeltaTable(path, version=version)
    return sorted(table.file_uris(partition_filters=list(partition_filters) if partition_filters else None))
