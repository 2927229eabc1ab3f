"""Spark session construction with Delta enabled; the one place a session is built."""
from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from pyspark import SparkConf
from pyspark.sql import SparkSession

DELTA_VERSION = "3.3.2"
DELTA_ARTIFACTS = ("delta-spark_2.12", "delta-storage")

_DELTA_SETTINGS = {
    "spark.sql.extensions": "io.delta.sql.DeltaSparkSessionExtension",
    "spark.sql.catalog.spark_catalog": "org.apache.spark.sql.delta.catalog.DeltaCatalog",
    # Partition columns (split, shard) must never be overwritten wholesale by a dynamic write.
    "spark.sql.sources.partitionOverwriteMode": "static",
    "spark.sql.session.timeZone": "UTC",
    "spark.sql.execution.arrow.pyspark.enabled": "true",
    "spark.databricks.delta.schema.autoMerge.enabled": "false",
    # Delta rebuilds table state with 50 tasks by default: far too many for small local tables.
    "spark.databricks.delta.snapshotPartitions": "4",
    # Progress is shown by the jobs themselves; Spark's bar would interleave with it.
    "spark.ui.showConsoleProgress": "false",
}


def default_jar_cache() -> Path:
    """Folder that holds the Delta jars (filled by scripts/fetch_jars.sh); SHARDLAKE_JARS overrides."""
    return Path(os.environ.get("SHARDLAKE_JARS", Path.home() / ".cache" / "shardlake" / "jars"))


def delta_jars(cache: Path) -> list[Path]:
    """The cached Delta jars, or an empty list when the cache is incomplete."""
    jars = [cache / f"{name}-{DELTA_VERSION}.jar" for name in DELTA_ARTIFACTS]
    return jars if all(j.is_file() for j in jars) else []


def build_session(
    master: str,
    app_name: str,
    settings: Mapping[str, str] | None = None,
    jars: Sequence[Path] | None = None,
) -> SparkSession:
    """Start (or join) a Spark session with Delta enabled.

    Under spark-submit the submitted master wins over ``master``. The Delta jars come from the
    local cache when present, else Spark resolves them from Maven once (``spark.jars.packages``).
    """
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    submitted = SparkConf()
    builder = SparkSession.builder.appName(app_name)
    if not submitted.contains("spark.master"):
        builder = builder.master(master)
    found = list(jars) if jars is not None else delta_jars(default_jar_cache())
    if found:
        builder = builder.config("spark.jars", ",".join(str(j) for j in found))
    else:
        packages = ",".join(f"io.delta:{name}:{DELTA_VERSION}" for name in DELTA_ARTIFACTS)
        builder = builder.config("spark.jars.packages", packages)
    for key, value in {**_DELTA_SETTINGS, **dict(settings or {})}.items():
        builder = builder.config(key, value)
    return builder.getOrCreate()
