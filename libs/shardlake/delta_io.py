"""Delta table writes and reads with the guarantees jobs rely on: idempotent, versioned, exact.

Commits are the expensive part of small Delta writes (each one reloads the table's snapshot), so
a new table is created with its CHECK constraints in one commit. Writes by key are a MERGE; into
a table found empty, an append that carries a first-load transaction id (``first_load``), so two
concurrent first loads still conflict rather than both append. A writer finds its own commit by
the commit metadata it attached, not by "the latest version".
"""
from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping, Sequence
from contextlib import contextmanager, nullcontext
from typing import Iterator
from uuid import uuid4

from delta.tables import DeltaTable
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from shardlake import delta_log

CONSTRAINT_PREFIX = "delta.constraints."


log = logging.getLogger(__name__)

class SchemaChangeError(ValueError):
    """Incoming data whose schema differs from the table's, with evolution not allowed."""


def sql_string(value: str) -> str:
    """A Spark SQL string literal (backslashes and quotes escaped), for values spliced into SQL text."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def table_exists(spark: SparkSession, path: str) -> bool:
    return DeltaTable.isDeltaTable(spark, path)


def latest_version(spark: SparkSession, path: str) -> int:
    """The newest version of the Delta table at ``path``, read from its log (no Spark job)."""
    version = delta_log.newest_version(path)
    # No table there: Spark's lookup raises its own error, which callers already know.
    return version if version is not None else DeltaTable.forPath(spark, path).history(1).select("version").first()[0]


def read_version(spark: SparkSession, path: str, version: int | None = None) -> DataFrame:
    """The table as of ``version`` (latest when None)."""
    reader = spark.read.format("delta")
    if version is not None:
        reader = reader.option("versionAsOf", version)
    return reader.load(path)


def commit_metrics(spark: SparkSession, path: str, version: int) -> dict[str, str]:
    """operationMetrics of one commit (e.g. numSourceRows of a MERGE, numOutputRows of a WRITE), from the log."""
    return dict((delta_log.commit_info(path, version) or {}).get("operationMetrics") or {})


def _schema_diff(existing: T.StructType, incoming: T.StructType) -> list[str]:
    have = {f.name: f.dataType.simpleString() for f in existing.fields}
    new = {f.name: f.dataType.simpleString() for f in incoming.fields}
    changes = [f"missing column {n}" for n in have if n not in new]
    changes += [f"new column {n} ({t})" for n, t in new.items() if n not in have]
    changes += [f"column {n}: {have[n]} -> {t}" for n, t in new.items() if n in have and have[n] != t]
    return changes


def check_schema(spark: SparkSession, path: str, schema: T.StructType,
                 allow_evolution: bool = False) -> list[T.StructField]:
    """Compare incoming data with an existing table; return the new columns evolution would add.

    Refused (SchemaChangeError, naming every difference) unless identical, or, with evolution
    allowed, only new columns: a dropped column or a changed type is refused either way, since
    Delta cannot apply it without rewriting the table.
    """
    existing = DeltaTable.forPath(spark, path).toDF().schema
    changes = _schema_diff(existing, schema)
    if not changes:
        return []
    have = set(existing.fieldNames())
    added = [f for f in schema.fields if f.name not in have]
    if allow_evolution and len(added) == len(changes):
        return added
    advice = ("only added columns can evolve; a dropped column or a changed type needs a new table"
              if allow_evolution else "Set allow_schema_evolution: true in the dataset config to accept new columns")
    raise SchemaChangeError(f"{path}: incoming schema differs from the table: {'; '.join(changes)}. {advice}.")


def table_properties(spark: SparkSession, path: str) -> dict[str, str]:
    """Table properties of the latest version (constraints included, as delta.constraints.*)."""
    return dict(DeltaTable.forPath(spark, path).detail().select("properties").first()[0] or {})


def table_constraints(spark: SparkSession, path: str) -> dict[str, str]:
    """CHECK constraints of a table, name -> SQL expression."""
    properties = table_properties(spark, path)
    return {k[len(CONSTRAINT_PREFIX):]: v for k, v in properties.items() if k.startswith(CONSTRAINT_PREFIX)}


def _sync_constraints(spark: SparkSession, path: str, wanted: Mapping[str, str]) -> None:
    """Make the table's CHECK constraints the declared ones; commits only for those that changed."""
    current = table_constraints(spark, path)
    wanted = {k.lower(): v for k, v in wanted.items()}
    for name, expression in current.items():
        if wanted.get(name) != expression:
            spark.sql(f"ALTER TABLE delta.`{path}` DROP CONSTRAINT {name}")
    for name, expression in wanted.items():
        if current.get(name) != expression:
            spark.sql(f"ALTER TABLE delta.`{path}` ADD CONSTRAINT {name} CHECK ({expression})")


class TableBeingCreated(RuntimeError):
    """Another writer is creating this table right now (its log exists, its first commit not yet)."""


class FirstLoadTaken(RuntimeError):
    """Another writer's first load committed into this table after this writer found it empty."""


@contextmanager
def _creation_race(path: str) -> Iterator[None]:
    """Turn Delta's "table not found" while another writer creates the table into a retriable conflict."""
    from pyspark.errors import AnalysisException

    try:
        yield
    except AnalysisException as err:
        if (err.getErrorClass() or "") == "DELTA_TABLE_NOT_FOUND":
            raise TableBeingCreated(f"{path}: another writer is creating this table") from err
        raise


def ensure_table(
    spark: SparkSession,
    path: str,
    schema: T.StructType,
    partition_by: Sequence[str] = (),
    constraints: Mapping[str, str] | None = None,
    allow_evolution: bool = False,
    properties: Mapping[str, str] | None = None,
) -> bool:
    """Create the table if missing, CHECK constraints and ``properties`` included, in one commit.

    Returns True if it was created.
    An existing table must match ``schema`` (see ``check_schema``); allowed new columns are added
    (one commit) and, when ``constraints`` is given, its constraints are brought in line with it
    (commits only for changes; adding one validates the rows already there). While another
    writer is creating the same table this raises ``TableBeingCreated``, which
    ``retry_on_conflict`` retries like any commit conflict.
    """
    with _creation_race(path):
        return _ensure_table(spark, path, schema, partition_by, constraints, allow_evolution, properties)


def _ensure_table(spark, path, schema, partition_by, constraints, allow_evolution, properties) -> bool:
    if table_exists(spark, path):
        added = check_schema(spark, path, schema, allow_evolution)
        if added:
            columns = ", ".join(f"`{f.name}` {f.dataType.simpleString()}" for f in added)
            spark.sql(f"ALTER TABLE delta.`{path}` ADD COLUMNS ({columns})")
        if constraints is not None:
            _sync_constraints(spark, path, constraints)
        return False
    builder = DeltaTable.createIfNotExists(spark).location(path).addColumns(schema)
    if partition_by:
        builder = builder.partitionedBy(*partition_by)
    # Constraints given as table properties at creation: one commit instead of one per constraint.
    for name, expression in (constraints or {}).items():
        builder = builder.property(f"{CONSTRAINT_PREFIX}{name.lower()}", expression)
    for name, value in (properties or {}).items():
        builder = builder.property(name, value)
    builder.execute()
    return True


def is_empty(spark: SparkSession, path: str) -> bool:
    """True when the table's latest snapshot holds no row (from the log's statistics: no job, no scan)."""
    return delta_log.row_count(path, latest_version(spark, path)) == 0


@contextmanager
def session_conf(spark: SparkSession, settings: Mapping[str, str]) -> Iterator[None]:
    """Set Spark SQL settings for the block only, then put the previous values back."""
    previous = {key: spark.conf.get(key, None) for key in settings}
    for key, value in settings.items():
        spark.conf.set(key, value)
    try:
        yield
    finally:
        for key, value in previous.items():
            if value is None:
                spark.conf.unset(key)
            else:
                spark.conf.set(key, value)


USER_METADATA = "spark.databricks.delta.commitInfo.userMetadata"
MATERIALIZE_SOURCE = "spark.databricks.delta.merge.materializeSource"


def commit_metadata(spark: SparkSession, metadata: Mapping[str, object]):
    """Attach JSON metadata (run id, counts) to the Delta commits made inside the block."""
    return session_conf(spark, {USER_METADATA: json.dumps(metadata, sort_keys=True, default=str)})


def own_commit(spark: SparkSession, path: str, after: int, marker: str | None = None) -> int | None:
    """The newest version after ``after`` that carries ``marker`` (default: this session's commit metadata).

    "The latest version" right after a write may already be a concurrent writer's commit; the
    commit metadata (which holds the run id) says which one is ours. Without any marker there
    is no way to tell, so this refuses rather than guess.
    """
    marker = marker or spark.conf.get(USER_METADATA, None)
    if not marker:
        raise ValueError("own_commit needs commit metadata (delta_io.commit_metadata) to tell its commits apart")
    # From the log (delta-rs): a few commit files read, not a Spark job per lookup.
    return max((entry["version"] for entry in delta_log.commits_after(path, after)
                if entry.get("userMetadata") == marker), default=None)


def append(spark: SparkSession, path: str, source: DataFrame) -> int:
    """Append ``source`` (schema enforced, constraints checked by Delta); returns the new version."""
    source.write.format("delta").mode("append").save(path)
    return latest_version(spark, path)


# The transaction id every first load carries (Delta records the latest version per id in the table).
FIRST_LOAD_APP_ID = "shardlake-first-load"


def first_load(spark: SparkSession, path: str, source: DataFrame, empty_at: int) -> int:
    """Append ``source`` into a table that held no row at version ``empty_at``; the version committed.

    The cheapest safe first write: a MERGE into an empty table still joins, and by default
    materialises its source first. A blind append would let two concurrent first loads both
    commit (every row twice), so each carries Delta's idempotent-write id (``txnAppId``, with
    ``txnVersion`` = ``empty_at``): of two that race, Delta refuses the later commit
    (ConcurrentTransactionException), and one that starts after the other committed is skipped
    by Delta (its id's version is already recorded). Both come out as a conflict, so
    ``retry_on_conflict`` runs the caller again, which then finds the other writer's rows. Table
    versions only grow, so a table emptied later is first-loaded again under a higher version.
    Needs the caller's commit metadata (``commit_metadata``) to find its commit.
    """
    version = _append_under(spark, path, source, FIRST_LOAD_APP_ID, empty_at, after=empty_at)
    if version is None:
        raise FirstLoadTaken(f"{path}: another writer's first load committed after version {empty_at}")
    return version


def append_once(spark: SparkSession, path: str, source: DataFrame, app_id: str) -> int | None:
    """Append ``source`` unless a commit under ``app_id`` is already in the table; the version committed, or None.

    A blind append: it reads none of the table's files, so it costs ``source``, not the table. Delta
    makes it idempotent: it carries ``app_id`` as its idempotent-write id (``txnAppId``, with
    ``txnVersion`` 0), so Delta skips it (None) once a commit under that id exists, and of two that
    race refuses the later (ConcurrentTransactionException, retried by ``retry_on_conflict``).
    """
    with _own_marker(spark, "append"):
        return _append_under(spark, path, source, app_id, 0, after=latest_version(spark, path))


def _append_under(spark: SparkSession, path: str, source: DataFrame, app_id: str, txn_version: int,
                  after: int) -> int | None:
    """Append ``source`` carrying Delta's idempotent-write id (``app_id``, ``txn_version``); this
    writer's own commit after version ``after``, or None when Delta skipped the append."""
    (source.write.format("delta").mode("append")
     .option("txnAppId", app_id).option("txnVersion", txn_version).save(path))
    return own_commit(spark, path, after)


def _own_marker(spark: SparkSession, kind: str):
    """The caller's commit metadata if it set any; else a marker of this one write's own, which tells
    its commit apart (``own_commit``)."""
    return nullcontext() if spark.conf.get(USER_METADATA, None) else commit_metadata(spark, {kind: uuid4().hex})


def merge_by_key(
    spark: SparkSession,
    path: str,
    source: DataFrame,
    key: Sequence[str],
    prune_on: Sequence[str] = (),
    changed_when: str | None = None,
    update: bool = True,
    target_filter=None,
    stable_source: bool = False,
) -> int | None:
    """MERGE ``source`` into the table on ``key``: insert new keys, update changed rows, never duplicate.

    ``source`` must be unique on ``key``. ``prune_on`` lists partition columns that are functions
    of the key, added to the condition so Delta touches only the partitions the source hits.
    ``changed_when`` (SQL on t./s.) limits updates to rows whose content differs, so a re-run
    rewrites nothing. ``target_filter`` (a Column on ``t.``) names the only target rows the
    source can match, so Delta reads only the files whose statistics can hold them (the
    condition's join part prunes nothing: Delta skips files by target-only predicates).
    Into an empty table too two MERGEs conflict and the loser fails with Delta's conflict
    exception (see ``retry_on_conflict``); ``first_load`` is the cheaper write there.

    ``stable_source``: the source reads only data that cannot change while the MERGE runs (files
    of the run's own staging folder, a pinned table version, local rows), so Delta need not copy
    it aside first (``merge.materializeSource``, which guards against a source that changes
    between the MERGE's two reads of it, at the cost of one more pass over the source).

    Returns the version this MERGE committed, or None when it committed nothing: Delta makes no
    commit for a MERGE that inserts and updates no row, and "the latest version" would then be
    another writer's commit, which this writer must never check or undo as its own.
    """
    condition = F.expr(" AND ".join(f"t.`{c}` <=> s.`{c}`" for c in [*prune_on, *key]))
    if target_filter is not None:
        condition = target_filter & condition
    marked = _own_marker(spark, "merge")
    copied = session_conf(spark, {MATERIALIZE_SOURCE: "none"}) if stable_source else nullcontext()
    with marked, copied:
        before = latest_version(spark, path)
        merge = DeltaTable.forPath(spark, path).alias("t").merge(source.alias("s"), condition)
        if update:
            merge = merge.whenMatchedUpdateAll(condition=changed_when)
        merge.whenNotMatchedInsertAll().execute()
        return own_commit(spark, path, before)


def _conflict_types() -> tuple[type[BaseException], ...]:
    """Delta's commit-conflict exceptions (Python classes that pyspark maps the JVM's onto)."""
    from delta import exceptions as X

    return (X.DeltaConcurrentModificationException, X.ConcurrentWriteException, X.MetadataChangedException,
            X.ProtocolChangedException, X.ConcurrentAppendException, X.ConcurrentDeleteReadException,
            X.ConcurrentDeleteDeleteException, X.ConcurrentTransactionException, TableBeingCreated,
            FirstLoadTaken)


def retry_on_conflict(action, path: str, attempts: int = 4, pause_s: float = 2.0):
    """Run a Delta write again when a concurrent writer won the commit (an idempotent write only).

    Delta's optimistic concurrency refuses the later of two conflicting commits with one of its
    typed conflict exceptions; re-running an idempotent write (MERGE by key) on the new snapshot
    is exactly what a person would do by hand. Any other error is raised at once.
    """
    conflicts = _conflict_types()
    for attempt in range(1, attempts + 1):
        try:
            return action()
        except conflicts as err:
            if attempt == attempts:
                raise
            log.warning("%s: concurrent writer won the commit (%s); retrying (%d/%d)", path,
                        type(err).__name__, attempt, attempts - 1)
            time.sleep(pause_s * attempt)
    raise AssertionError("unreachable")


def commit_counts(spark: SparkSession, path: str, version: int | None) -> dict[str, int]:
    """Rows inserted, updated and deleted by one MERGE or append commit, as Delta recorded them; zeros for None."""
    metrics = commit_metrics(spark, path, version) if version is not None else {}
    # An append (a first load) records only its output rows: all of them inserted.
    inserted = "numTargetRowsInserted" if "numTargetRowsInserted" in metrics else "numOutputRows"
    names = {"inserted": inserted, "updated": "numTargetRowsUpdated", "deleted": "numTargetRowsDeleted"}
    return {what: int(metrics.get(name, 0)) for what, name in names.items()}




class UndoError(RuntimeError):
    """A failed run's own commit could not be undone without undoing another writer's."""


def undo_commit(spark: SparkSession, path: str, version: int) -> None:
    """Undo this run's commit ``version`` by restoring ``version - 1``, only while it is the newest.

    Restoring to "the version before the run" would also undo whatever a concurrent writer
    committed meanwhile; with a later commit on top of ours, refuse and say how to undo by hand.
    """
    latest = latest_version(spark, path)
    if latest == version:
        spark.sql(f"RESTORE TABLE delta.`{path}` TO VERSION AS OF {version - 1}")
        return
    raise UndoError(f"{path}: version {version} was written by the failed run, but {latest - version} later "
                    f"commit(s) by another writer followed it, so it was not undone (that would undo theirs too); "
                    f"inspect DESCRIBE HISTORY delta.`{path}` and revert version {version} by hand")


def optimize(spark: SparkSession, path: str, zorder_by: Sequence[str] = ()) -> int:
    """Compact small files (OPTIMIZE), clustered by ``zorder_by`` when given; returns the version afterwards."""
    clustered = f" ZORDER BY ({', '.join(f'`{c}`' for c in zorder_by)})" if zorder_by else ""
    spark.sql(f"OPTIMIZE delta.`{path}`{clustered}")
    return latest_version(spark, path)


def partition_row_counts(spark: SparkSession, path: str, version: int, column: str) -> dict[str, int]:
    """Rows per value of a partition column in one version, from the Delta log's file statistics.

    No data file is opened; if a file lacks statistics, the rows are counted with Spark instead.
    """
    import pyarrow as pa

    actions = pa.table(delta_log.open_table(path, version).get_add_actions(flatten=True))
    counts: dict[str, int] = {}
    if actions.num_rows == 0:
        return counts
    if actions.column("num_records").null_count == 0:
        for value, records in zip(actions.column(f"partition.{column}").to_pylist(),
                                  actions.column("num_records").to_pylist()):
            counts[str(value)] = counts.get(str(value), 0) + int(records)
        return counts
    rows = read_version(spark, path, version).groupBy(column).count().collect()
    return {str(r[column]): int(r["count"]) for r in rows}
