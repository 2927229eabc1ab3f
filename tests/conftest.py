"""One Spark session for the whole test run: local, UI off, Delta on, few shuffle partitions."""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

from shardlake.session import CONNECTOR_SCHEMES, build_session

REPO = Path(__file__).resolve().parent.parent
# pyspark.testing imports pandas-on-Spark, which wants this set before any Spark context starts.
os.environ.setdefault("PYARROW_IGNORE_TIMEZONE", "1")
# Credentials for the test S3 server (tests/s3_server.py), in the environment before any JVM starts:
# pyarrow, delta-rs and Spark's S3A connector all take them from there, as in production.
os.environ.setdefault("AWS_ACCESS_KEY_ID", "shardlake-test-key")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "shardlake-test-secret")
os.environ.setdefault("AWS_EC2_METADATA_DISABLED", "true")


@pytest.fixture(scope="session")
def spark():
    warehouse = tempfile.mkdtemp(prefix="shardlake-warehouse-")
    session = build_session(
        "local[2]",
        "shardlake-tests",
        {
            "spark.ui.enabled": "false",
            "spark.sql.shuffle.partitions": "2",
            "spark.default.parallelism": "2",
            "spark.sql.warehouse.dir": warehouse,
            "spark.driver.memory": "2g",
            "spark.sql.adaptive.enabled": "false",
        },
        connectors=CONNECTOR_SCHEMES,
    )
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()
    shutil.rmtree(warehouse, ignore_errors=True)


@pytest.fixture(scope="session")
def s3_server():
    """A real S3 server (moto's standalone server, its own process) on loopback; its endpoint URL."""
    from s3_server import S3Server

    with S3Server() as server:
        yield server


@pytest.fixture(scope="session")
def gcs_server():
    """A real GCS-compatible server (fake-gcs-server, its own process) on loopback."""
    from gcs_server import GcsServer

    with GcsServer() as server:
        yield server


@pytest.fixture(scope="session")
def hdfs_server():
    """A real HDFS (Hadoop's MiniDFSCluster, its own JVM) on loopback."""
    from hdfs_server import HdfsServer

    with HdfsServer() as server:
        yield server


@pytest.fixture()
def lake_root(tmp_path: Path) -> Path:
    root = tmp_path / "lake"
    root.mkdir()
    return root


@pytest.fixture(scope="session")
def repo() -> Path:
    return REPO


@pytest.fixture(scope="session")
def flights_pipeline_run(spark, tmp_path_factory):
    """ingest -> train (+ gate) -> infer once per session through the jobs' main(), on a ~3.4k-row sample;
    what they wrote (read by tests/test_pipeline_integration.py and tests/test_ops_lineage.py)."""
    from flights_sample import write_sample
    from jobs import infer as infer_job
    from jobs import ingest as ingest_job
    from jobs import train as train_job
    from shardlake.lake import Lake

    root = tmp_path_factory.mktemp("pipeline")
    sample, rows = write_sample(root / "data", every=100)
    lake = Lake.at(root / "lake")
    overrides = [f"lake.root={lake.root}", f"dataset.source.path={sample}", "dataset.shards=4",
                 "train.epochs=2", "train.batch_size=128", "train.num_proc=2", "train.promote_threshold=0.0"]
    assert ingest_job.main(["--run-id", "it-1", *overrides]) == 0
    assert train_job.main(["--promote", *overrides]) == 0
    assert infer_job.main(["--logical-date", "2024-01-02", *overrides]) == 0
    return {"lake": lake, "rows": rows, "overrides": overrides, "sample": sample}


@pytest.fixture(scope="session")
def airflow_pipeline_run(tmp_path_factory):
    """One real `airflow dags test` of the pipeline DAG per session (tests/test_airflow.py and
    tests/test_notebooks.py read its lake). pytest keeps a fixture's skip or failure for its scope,
    so a failed run fails every later caller at once instead of running again."""
    from pipeline_helpers import run_pipeline_dag

    return run_pipeline_dag(tmp_path_factory.mktemp("airflow-pipeline"))


@pytest.fixture(autouse=True, scope="session")
def _spark_env():
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    os.environ.setdefault("PYSPARK_PYTHON", os.sys.executable)


class ReliabilityLog:
    """Rows of the reliability report: what was tried, what happened, rows lost and duplicated."""

    rows: list[tuple[str, str, int, int]] = []

    def record(self, case: str, outcome: str, lost: int, duplicated: int) -> None:
        self.rows.append((case, outcome, lost, duplicated))


@pytest.fixture()
def reliability() -> ReliabilityLog:
    return ReliabilityLog()


def pytest_terminal_summary(terminalreporter):
    """Print the reliability table (make reliability) after the run."""
    rows = ReliabilityLog.rows
    if not rows:
        return
    width = max(len(r[0]) for r in rows)
    out = terminalreporter
    out.section("reliability report: faults and hostile inputs")
    out.write_line(f"{'case':<{width}}  {'lost':>4}  {'dup':>4}  outcome")
    for case, outcome, lost, duplicated in rows:
        out.write_line(f"{case:<{width}}  {lost:>4}  {duplicated:>4}  {outcome}")
    bad = [r for r in rows if r[2] or r[3]]
    out.write_line(f"{len(rows)} cases, {len(bad)} with rows lost or duplicated")
