"""A Delta table's log read without Spark (delta-rs): versions, commits, exact files, row counts.

A driver that only needs to know what a version holds or which commit is its own should not
start a Spark job for it: the log already says, and reading it costs milliseconds.
"""
from __future__ import annotations

from collections.abc import Sequence

from shardlake.storage import table_location


def open_table(path: str, version: int | None = None):
    """delta-rs's view of a table (at ``version``), on a local folder or an object store alike."""
    from deltalake import DeltaTable as RsDeltaTable

    uri, options = table_location(path)
    return RsDeltaTable(uri, version=version, storage_options=options or None)


def newest_version(path: str) -> int | None:
    """Newest version of a Delta table, or None when there is none."""
    from deltalake.exceptions import TableNotFoundError

    try:
        return open_table(path).version()
    except TableNotFoundError:
        return None


def find_commit(path: str, after: int | None, token: str) -> dict | None:
    """The commit after version ``after`` whose metadata carries ``token`` (another writer may have committed too).

    None when the writer committed nothing: Delta skips the commit of a MERGE that inserts and
    updates no row.
    """
    return next((entry for entry in commits_after(path, after if after is not None else -1)
                 if token in (entry.get("userMetadata") or "")), None)


def commits_after(path: str, after: int) -> list[dict]:
    """The commits (commitInfo, with ``version``) after version ``after``, newest first."""
    table = open_table(path)
    newer = table.version() - after
    return table.history(newer) if newer > 0 else []


def commit_info(path: str, version: int) -> dict | None:
    """One commit's commitInfo (operation, operationMetrics, userMetadata, ...), or None if absent."""
    return next((entry for entry in commits_after(path, version - 1) if entry.get("version") == version), None)


def row_count(path: str, version: int) -> int:
    """Rows in one table version, summed from the Delta log's file statistics (no data file read)."""
    import pyarrow as pa

    actions = pa.table(open_table(path, version).get_add_actions(flatten=True))
    if actions.num_rows and actions.column("num_records").null_count:
        raise ValueError(f"{path}@{version}: some data files carry no row count statistics")
    return int(sum(actions.column("num_records").to_pylist())) if actions.num_rows else 0


def rows_where(path: str, column: str, value: object, columns: Sequence[str]) -> list[dict]:
    """``columns`` of the latest version's rows whose ``column`` equals ``value``, read on the driver.

    For a lookup of a few rows in a small bookkeeping table (a run's record in ingest_runs): a
    Spark job for it costs half a second, the files' statistics let delta-rs read only those
    that can hold the value.
    """
    import pyarrow.dataset as ds

    dataset = open_table(path).to_pyarrow_dataset()
    return dataset.to_table(columns=list(columns), filter=ds.field(column) == value).to_pylist()


def snapshot_files(path: str, version: int,
                   partition_filters: Sequence[tuple[str, str, str]] | None = None) -> list[str]:
    """Exact data files of one table version (optionally one partition), via the Delta log.

    A Delta folder also holds files that later versions removed (until VACUUM), so readers such as
    Petastorm must get this list, never the bare folder.
    """
    table = open_table(path, version)
    return sorted(table.file_uris(partition_filters=list(partition_filters) if partition_filters else None))
