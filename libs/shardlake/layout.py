"""The clean table's layout (key, shards, split percentages, salt), recorded on the table itself.

Where a row lives is a function of its key and of this layout: ``shard = pmod(xxhash64(key), N)``
and the split from a salted hash. A run with another layout would place an existing key in
another shard or split, and the MERGE (which matches on key within the partitions the key maps
to) would insert a second row for it. So the layout is written into the table's properties when
the table is created, every run compares its configuration with them before it writes anything,
and changing it is an explicit rebuild that rewrites every row in one commit.
"""
from __future__ import annotations

import logging
from collections.abc import Mapping

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from shardlake import delta_io, delta_log
from shardlake.config import DatasetSpec
from shardlake.transforms import clean as C

PREFIX = "shardlake.layout."
REBUILD_HINT = "shardlake-ingest --rebuild-layout (or python -m jobs.ingest --rebuild-layout)"
log = logging.getLogger(__name__)


class LayoutChangeError(ValueError):
    """The configuration's layout differs from the one the table records; nothing was written."""


def layout_properties(spec: DatasetSpec) -> dict[str, str]:
    """The table properties that record ``spec``'s layout."""
    splits = spec.splits
    return {
        f"{PREFIX}key": ",".join(spec.key),
        f"{PREFIX}shards": str(spec.shards),
        f"{PREFIX}splits": f"{splits.train}/{splits.validation}/{splits.test}",
        f"{PREFIX}salt": splits.salt,
    }


STATS_COLUMNS = "delta.dataSkippingStatsColumns"


def table_properties(spec: DatasetSpec) -> dict[str, str]:
    """Every property the clean table is created with: its layout, and file statistics on the key only.

    Delta collects min/max/null-count statistics per file for every column by default, a fifth
    of the cost of writing a clean row (measured: 1M rows, 3.7-4.6 s against 3.0-3.6 s). Only
    the key's statistics are ever used: a MERGE skips files by the ``cluster_by`` columns (a
    subset of the key), and row counts (kept for every file whatever this says) answer the
    rest. The statistics setting is not part of the layout: a table created with other
    statistics is not refused, and keeps them.
    """
    return {**layout_properties(spec), STATS_COLUMNS: ",".join(spec.key)}


_CONFIG_FIELD = {"key": "dataset.key", "shards": "dataset.shards",
                 "splits": "dataset.splits (train/validation/test)", "salt": "dataset.splits.salt"}


def layout_differences(recorded: Mapping[str, str], wanted: Mapping[str, str]) -> list[str]:
    """One line per layout property whose recorded value differs from the configured one."""
    lines = []
    for name, value in wanted.items():
        short = name.removeprefix(PREFIX)
        if recorded.get(name) != value:
            lines.append(f"{_CONFIG_FIELD[short]} is {value!r} in the configuration but the table was "
                         f"written with {recorded.get(name)!r}")
    return lines


def check_layout(spark: SparkSession, path: str, spec: DatasetSpec) -> None:
    """Refuse (LayoutChangeError) a run whose layout differs from the one the table records.

    A table written before the layout was recorded has no such properties: its rows are checked
    against the configured layout once (one scan) and, if every row is where the layout puts it,
    the layout is recorded (one commit); otherwise the run is refused as for a change.
    """
    wanted = layout_properties(spec)
    recorded = {k: v for k, v in delta_io.table_properties(spark, path).items() if k.startswith(PREFIX)}
    if not recorded:
        misplaced = misplaced_rows(delta_io.read_version(spark, path), spec).count()
        if misplaced:
            raise LayoutChangeError(f"{path}: {misplaced} rows are not where the configured layout "
                                    f"{_describe(wanted)} puts them; {_advice(spec)}")
        log.info("%s: recording the table's layout %s", path, _describe(wanted))
        settings = ", ".join(f"'{k}' = '{v}'" for k, v in wanted.items())
        spark.sql(f"ALTER TABLE delta.`{path}` SET TBLPROPERTIES ({settings})")
        return
    differences = layout_differences(recorded, wanted)
    if differences:
        raise LayoutChangeError(f"{path}: the table's layout differs from the configuration: "
                                f"{'; '.join(differences)}. Refused before any write: existing keys would be "
                                f"placed again in another shard or split and stored twice. {_advice(spec)}")


def _describe(properties: Mapping[str, str]) -> str:
    return ", ".join(f"{k.removeprefix(PREFIX)}={v}" for k, v in properties.items())


def _advice(spec: DatasetSpec) -> str:
    return (f"either set the configuration back to the table's layout, or rebuild the table in the new layout "
            f"with {REBUILD_HINT} and the same configuration: it rewrites every row of "
            f"{spec.name}/clean in one commit")


def _placed(table: DataFrame, spec: DatasetSpec) -> DataFrame:
    return C.add_shard_and_split(table, spec.key, spec.shards, spec.splits.train, spec.splits.validation,
                                 spec.splits.salt)


def misplaced_rows(table: DataFrame, spec: DatasetSpec) -> DataFrame:
    """Rows whose shard or split is not the one ``spec``'s layout gives their key."""
    placed = _placed(table.withColumnsRenamed({C.SHARD: "_was_shard", C.SPLIT: "_was_split"}), spec)
    moved = ~F.col(C.SHARD).eqNullSafe(F.col("_was_shard")) | ~F.col(C.SPLIT).eqNullSafe(F.col("_was_split"))
    return placed.where(moved)


def relaid(table: DataFrame, spec: DatasetSpec) -> DataFrame:
    """The table's rows with shard and split recomputed for ``spec``'s layout (same columns, same order)."""
    return _placed(table.drop(C.SHARD, C.SPLIT), spec).select(*table.columns)


def _sql_properties(properties: Mapping[str, str]) -> str:
    return ", ".join(f"{delta_io.sql_string(k)} = {delta_io.sql_string(v)}" for k, v in properties.items())


class RebuildError(RuntimeError):
    """A rebuild that could not be committed as the table's only change; it was undone."""


def rebuild(spark: SparkSession, path: str, spec: DatasetSpec, constraints: Mapping[str, str]) -> int:
    """Rewrite every row of the clean table in ``spec``'s layout, in one commit; returns its version.

    One CREATE OR REPLACE TABLE ... AS SELECT: readers see the old layout or the new one, never a
    mix. The rows are read from one pinned version; a commit by another writer between that read
    and this commit would be lost by the replace, so that case is undone and refused (run the
    rebuild while no ingest writes the table).
    """
    read_at = delta_io.latest_version(spark, path)
    rows_before = delta_log.row_count(path, read_at)
    view = f"_shardlake_rebuild_{spec.name}"
    relaid(delta_io.read_version(spark, path, read_at), spec).createOrReplaceTempView(view)
    properties = {**{f"{delta_io.CONSTRAINT_PREFIX}{k.lower()}": v for k, v in constraints.items()},
                  **table_properties(spec)}
    try:
        with delta_io.commit_metadata(spark, {"rebuild_layout": _describe(layout_properties(spec))}):
            spark.sql(f"CREATE OR REPLACE TABLE delta.`{path}` USING DELTA PARTITIONED BY ({C.SPLIT}, {C.SHARD}) "
                      f"TBLPROPERTIES ({_sql_properties(properties)}) AS SELECT * FROM {view}")
            version = delta_io.own_commit(spark, path, read_at)
    finally:
        spark.catalog.dropTempView(view)
    if version != read_at + 1 or delta_log.row_count(path, version) != rows_before:
        if version is not None:
            delta_io.undo_commit(spark, path, version)
        raise RebuildError(f"{path}: another commit came between the rebuild's read (version {read_at}) and its "
                           f"write, or the row count changed; the rebuild was undone. Run it again while no "
                           f"ingest writes the table.")
    return version
