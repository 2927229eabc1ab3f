"""Where a dataset's tables and models live under a lake root, and nowhere else.

The root is a local folder (the embedded default) or a store's URL (``s3a://bucket/lake``,
``gs://bucket/lake``, ``hdfs://namenode:8020/lake``); ``shardlake.storage`` owns the difference. Table locations are
strings Spark and delta-rs both take; every one is checked to stay under the root, on the
normalised location.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from shardlake.folders import Folder
from shardlake.storage import LakePathError, LocalStore, Store, StoreSettings, StorageError

__all__ = ["Lake", "LakePathError", "StorageError"]


@dataclass(frozen=True)
class Lake:
    """A lake root; every table and model location is derived from it and stays inside it."""

    store: Store

    @classmethod
    def at(cls, root: str | Path, settings: StoreSettings | None = None) -> "Lake":
        return cls(Store.create(root, settings))

    @property
    def root(self) -> str:
        return self.store.root

    @property
    def is_local(self) -> bool:
        return isinstance(self.store, LocalStore)

    def location(self, *parts: str) -> str:
        """A location under the root (a path for a local lake, a URL otherwise); refuses escapes."""
        try:
            return self.store.child(*parts)
        except LakePathError as err:
            raise LakePathError(f"{'/'.join(map(str, parts))!r} is outside the lake root {self.root}: {err}") from None

    def path(self, *parts: str) -> Path:
        """A folder or file of a local lake under the root, as a path; refuses absolute parts and '..' escapes.

        Code that also runs on an object store uses ``location`` and a ``Folder``; asking a lake on
        object storage for a local path says so instead of writing beside the lake.
        """
        if not self.is_local:
            raise StorageError(f"{self.root}: {'/'.join(parts)} has no local path: the lake is on object storage")
        return Path(self.location(*parts))

    def table(self, dataset: str, name: str) -> str:
        """Location of one Delta table of a dataset (clean, quarantine, predictions, ...)."""
        return self.location(dataset, name)

    def staging(self, *parts: str) -> Path:
        return self.path("_staging", *parts)

    def scratch(self) -> Path | Folder:
        """Where the driver unpacks zipped sources for Spark to read: the lake's staging folder, on the lake's
        own store (a lake on S3 gets objects there, which executors on every node can read)."""
        if self.is_local:
            return self.staging()
        return Folder(self.staging_location(), self.store.settings)

    def staging_location(self, *parts: str) -> str:
        """A staging location Spark writes to (under the lake root, on whatever store it is)."""
        return self.location("_staging", *parts)

    def model_location(self, dataset: str, model_version: str) -> str:
        """A model version's run folder (weights, card, checkpoints, curve), on the lake's store."""
        return self.location("models", dataset, model_version)

    def model_dir(self, dataset: str, model_version: str) -> Path:
        """``model_location`` of a local lake, as a path."""
        return self.path("models", dataset, model_version)

    def registry(self) -> str:
        return self.location("_registry", "models")

    def single_writer_warning(self, spark_settings: Mapping[str, str]) -> str | None:
        """What to tell an operator whose lake is on S3 with Delta's default log store, else None.

        That log store makes a commit atomic for one writing Spark driver at a time (S3 offers it no
        put-if-absent): two drivers committing to one table at once can lose a commit. The Airflow
        DAG runs one run of a dataset at a time; anything else writing the same tables needs Delta's
        DynamoDB log store.
        """
        if self.is_local or not self.root.startswith("s3a://"):
            return None
        if any(spark_settings.get(k, "").endswith("S3DynamoDBLogStore") for k in _LOG_STORE_KEYS):
            return None
        return (f"{self.root}: Delta's default S3 log store allows one writing Spark driver at a time; do not "
                "run two jobs of one dataset at once, or set spark.delta.logStore.s3a.impl="
                "io.delta.storage.S3DynamoDBLogStore (README: The lake on S3)")


_LOG_STORE_KEYS = ("spark.delta.logStore.s3a.impl", "spark.delta.logStore.s3.impl", "spark.delta.logStore.class")
