"""Spark session construction with Delta enabled; the one place a session is built."""
from __future__ import annotations

import logging
import os
import re
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from pyspark import SparkConf, SparkContext
from pyspark.sql import SparkSession

DELTA_VERSION = "3.3.3"
DELTA_ARTIFACTS = ("delta-spark_2.12", "delta-storage")
# The S3A connector of pip pyspark's own Hadoop (hadoop-client-api 3.3.4), with the AWS SDK bundle its POM names.
S3A_ARTIFACTS = (("org.apache.hadoop", "hadoop-aws", "3.3.4"), ("com.amazonaws", "aws-java-sdk-bundle", "1.12.262"))
# Google's GCS connector, shaded (its own Guava and HTTP client). The hadoop3-2.2 line: the 3.x and 4.x lines
# call Hadoop 3.3.5+ APIs (Options.OpenFileOptions) that pyspark's Hadoop 3.3.4 lacks, and fail on every read.
GCS_CONNECTOR_JAR = "gcs-connector-hadoop3-2.2.28-shaded.jar"
# Which object store each Hadoop scheme's connector reaches (hdfs:// is in pyspark's own Hadoop client).
CONNECTOR_SCHEMES = ("s3a", "gs")
# OpenLineage's Spark listener (scripts/fetch_jars.sh caches it), for jobs with lineage on.
OPENLINEAGE_ARTIFACT = ("io.openlineage", "openlineage-spark_2.12", "1.53.0")

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
    # The ingest's plans are wide (raw text, typed columns, rule flags, both joins' columns): at the default
    # of 25 fields Spark warns once per session that it truncated a plan's description, in the middle of
    # the progress bars.
    "spark.sql.debug.maxToStringFields": "1000",
    # Spark keeps 100 compiled generated classes by default; one ingest generates ~190, so in a warm
    # session (a notebook, a nightly loop) each run evicted the last one's and compiled and JIT-warmed
    # all of them again (measured: ~190 compiles and 1.3-2.5 s per run, 2.4 s of a 200k-row run).
    "spark.sql.codegen.cache.maxEntries": "2000",
}


def default_jar_cache() -> Path:
    """Folder that holds the Delta jars (filled by scripts/fetch_jars.sh); SHARDLAKE_JARS overrides."""
    return Path(os.environ.get("SHARDLAKE_JARS", Path.home() / ".cache" / "shardlake" / "jars"))


def delta_jars(cache: Path) -> list[Path]:
    """The cached Delta jars, or an empty list when the cache is incomplete."""
    jars = [cache / f"{name}-{DELTA_VERSION}.jar" for name in DELTA_ARTIFACTS]
    return jars if all(j.is_file() for j in jars) else []


def s3a_jars(cache: Path) -> list[Path]:
    """The cached S3A connector jars, or an empty list when the cache lacks one."""
    jars = [cache / f"{artifact}-{version}.jar" for _, artifact, version in S3A_ARTIFACTS]
    return jars if all(j.is_file() for j in jars) else []


class MissingJarError(FileNotFoundError):
    """A connector jar the session needs is not in the jar cache (one line: the jar and how to fetch it)."""


def connector_jars(cache: Path, schemes: Sequence[str]) -> tuple[list[Path], list[str]]:
    """(cached jars, Maven packages to resolve) of the Hadoop connectors for ``schemes`` (``s3a``, ``gs``).

    The GCS connector has no Maven coordinate Spark can resolve (it is a classifier of its artifact):
    without the cached jar the session cannot start, which is said in one line.
    """
    found: list[Path] = []
    packages: list[str] = []
    if "s3a" in schemes:
        connector = s3a_jars(cache)
        found += connector
        packages += [] if connector else [":".join(S3A_ARTIFACTS[0])]
    if "gs" in schemes:
        if not (cache / GCS_CONNECTOR_JAR).is_file():
            raise MissingJarError(f"{cache}: no {GCS_CONNECTOR_JAR} (Hadoop's GCS connector, for gs:// lakes and "
                                  f"sources); run make install, or scripts/fetch_jars.sh {cache}")
        found.append(cache / GCS_CONNECTOR_JAR)
    return found, packages


def openlineage_jar(cache: Path) -> Path | None:
    """The cached OpenLineage Spark listener jar, or None."""
    jar = cache / f"{OPENLINEAGE_ARTIFACT[1]}-{OPENLINEAGE_ARTIFACT[2]}.jar"
    return jar if jar.is_file() else None


# local, local[N], local[*], local[N,F] (retries), local-cluster[workers,cores,memory].
_LOCAL_MASTER = re.compile(r"local(\[[^\]]*\])?|local-cluster\[[^\]]*\]")
WORKER_PYTHON = "spark.pyspark.python"


def is_local_master(master: str) -> bool:
    """True for masters whose executors all run on this machine (local modes, local-cluster)."""
    return _LOCAL_MASTER.fullmatch(master.strip()) is not None


def worker_python(master: str, environ: Mapping[str, str], conf: Mapping[str, str]) -> str | None:
    """The interpreter the session must hand Spark's Python workers (as PYSPARK_PYTHON), or None.

    PySpark starts workers with $PYSPARK_PYTHON, else the first ``python3`` on PATH: outside
    ``make`` (a console script, ``python -m``, a notebook kernel) that is often not the venv's, and
    training then dies with "No module named 'horovod'". A user's choice wins, ranked as
    spark-submit ranks them: ``spark.pyspark.python`` (which PySpark itself reads only under
    spark-submit), then $PYSPARK_PYTHON. Otherwise local executors run on this machine, so the
    driver's own interpreter is the right default. On a cluster the executors are other machines,
    where the driver's path may not exist or hold another environment; there the workers' Python
    is the deployment's choice (a shipped venv with PYSPARK_PYTHON, or the executor image's
    python3; README "Running on a cluster"), so it is left to Spark.
    """
    chosen = conf.get(WORKER_PYTHON) or environ.get("PYSPARK_PYTHON")
    if chosen:
        return chosen
    return sys.executable if is_local_master(master) else None


def _submitted_conf() -> SparkConf:
    """The settings spark-submit passed when this driver runs under it; otherwise the running context's, or none.

    Under spark-submit the driver JVM already runs (PYSPARK_GATEWAY_PORT) and holds them, but a
    SparkConf sees them only once connected to it, so connect first. Elsewhere no JVM may start
    here: the session's own settings (driver memory, jars) must reach its launch.
    """
    if os.environ.get("PYSPARK_GATEWAY_PORT"):
        SparkContext._ensure_initialized()
    return SparkConf()


# Idle py4j connections held across a fork (see guard_py4j_against_forks); empty except during one.
_HELD_ACROSS_FORK: list = []
_fork_guard: list[bool] = []


def _hold_py4j_connections() -> None:
    """Before a fork: a reference to every idle py4j connection of this driver."""
    client = getattr(SparkContext._gateway, "_gateway_client", None)
    _HELD_ACROSS_FORK[:] = list(getattr(client, "deque", ()))


def _release_py4j_connections() -> None:
    """After a fork, in the driver: the references are no longer needed."""
    _HELD_ACROSS_FORK.clear()


def guard_py4j_against_forks() -> None:
    """Keep forked children of the driver from shutting down the driver's connections to its JVM (idempotent).

    A forked child inherits the driver's py4j sockets. Python drops every other thread's state in
    the child; py4j then frees those threads' pinned connections, and ``ClientServerConnection.__del__``
    calls ``shutdown()`` on the socket, which acts on the socket both processes share: the JVM closes
    its end, and the driver's next command on it fails with "Connection reset by peer". py4j resends
    it on a new connection, but logs the failure with its traceback (root logger, INFO). Horovod forks
    the driver in every ``horovod.spark.run`` to check its own build (``gloo_built``, a 'fork'
    multiprocessing context), which left two tracebacks in each training log. Holding the idle
    connections across the fork keeps them alive in the child, which never closes them: children of
    a fork end with ``os._exit`` (multiprocessing) or ``exec``.
    """
    if not _fork_guard:
        os.register_at_fork(before=_hold_py4j_connections, after_in_parent=_release_py4j_connections)
        _fork_guard.append(True)


def build_session(
    master: str,
    app_name: str,
    settings: Mapping[str, str] | None = None,
    jars: Sequence[Path] | None = None,
    connectors: Sequence[str] = (),
    lineage: Mapping[str, str] | None = None,
) -> SparkSession:
    """Start (or join) a Spark session with Delta enabled.

    Under spark-submit the submitted master wins over ``master``. The Delta jars come from the
    local cache when present, else Spark resolves them from Maven once (``spark.jars.packages``).
    Python workers run the interpreter ``worker_python`` picks (exported as PYSPARK_PYTHON, the
    one thing PySpark reads when it starts a context). ``connectors``: the Hadoop schemes of the object
    stores the session reaches (``s3a``, ``gs``), whose connectors' jars it adds (``connector_jars``).
    ``lineage``: settings that attach OpenLineage's listener (``shardlake.ops.lineage.spark_settings``);
    its jar is added the same way. A session that already runs keeps the listeners it started with.
    """
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    guard_py4j_against_forks()
    submitted = _submitted_conf()
    builder = SparkSession.builder.appName(app_name)
    if not submitted.contains("spark.master"):
        builder = builder.master(master)
    conf = {"spark.master": master, **dict(submitted.getAll()), **dict(settings or {})}
    python = worker_python(conf["spark.master"], os.environ, conf)
    if python:
        os.environ["PYSPARK_PYTHON"] = python
    cache = default_jar_cache()
    found = list(jars) if jars is not None else delta_jars(cache)
    packages = [] if found else [f"io.delta:{name}:{DELTA_VERSION}" for name in DELTA_ARTIFACTS]
    connector, connector_packages = connector_jars(cache, connectors)
    found += connector
    packages += connector_packages
    submitted_jars = submitted.get("spark.jars", "")
    if lineage and os.environ.get("PYSPARK_GATEWAY_PORT") and "openlineage-spark" not in submitted_jars:
        # Under spark-submit the driver's class path is fixed: a listener it cannot load would stop the job.
        logging.getLogger("shardlake").warning(
            "lineage: OpenLineage's Spark listener is not on spark-submit's --jars; only the job's own events are sent")
        lineage = None
    if lineage:
        listener = openlineage_jar(cache)
        found += [listener] if listener else []
        packages += [] if listener else [":".join(OPENLINEAGE_ARTIFACT)]
    if found:
        builder = builder.config("spark.jars", ",".join(str(j) for j in found))
    if packages:
        builder = builder.config("spark.jars.packages", ",".join(packages))
    for key, value in {**_DELTA_SETTINGS, **dict(lineage or {}), **dict(settings or {})}.items():
        builder = builder.config(key, value)
    session = builder.getOrCreate()
    if lineage:
        _quiet_listener(session)
    return session


# What OpenLineage's listener logs on every query of a healthy job: that no connector of ours implements
# its extension interfaces, that an RDD (Horovod's, approxQuantile's) or a command names no dataset, and,
# at ERROR, that a Delta command without a query execution gets no event. A successful job's console
# shows none of it; the listener's own failures to send still reach the log at ERROR.
_LISTENER_LOG_LEVELS = {
    "io.openlineage": "ERROR",
    "io.openlineage.spark.agent.lifecycle.ContextFactory": "OFF",
}


def _quiet_listener(session: SparkSession) -> None:
    jvm = session.sparkContext._jvm
    for logger, level in _LISTENER_LOG_LEVELS.items():
        jvm.org.apache.logging.log4j.core.config.Configurator.setLevel(logger, jvm.org.apache.logging.log4j.Level.valueOf(level))
