"""Session construction (session.py): which Python the workers run, and which master wins.

Spark's Python workers start ``$PYSPARK_PYTHON``, else the first ``python3`` on PATH; a job started
outside ``make`` (console script, ``python -m``, a notebook kernel) must still get workers that run
the driver's interpreter. Each end-to-end case builds its session in a fresh process (a process
has one SparkContext), with an environment as a user's shell would have it: no PYSPARK_PYTHON and
a foreign ``python3`` first on PATH.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from functools import reduce
from pathlib import Path

import pytest
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from shardlake.session import is_local_master, worker_python

REPO = Path(__file__).resolve().parent.parent
SYSTEM_PYTHON = Path("/usr/bin/python3")
JARS = Path(os.environ.get("SHARDLAKE_JARS", Path.home() / ".cache" / "shardlake" / "jars"))

# Builds a session with build_session(master, settings) and prints what one worker task saw:
# its interpreter, whether it can import horovod, and the session's master.
PROBE = """
import json, sys
from shardlake.session import build_session

master, settings = sys.argv[1], json.loads(sys.argv[2])
spark = build_session(master, "session-probe", {"spark.ui.enabled": "false", **settings})

def probe(_):
    import sys
    try:
        import horovod  # noqa: F401
        found = True
    except ImportError:
        found = False
    yield {"executable": sys.executable, "horovod": found}

seen = spark.sparkContext.parallelize([0], 1).mapPartitions(probe).collect()[0]
print("PROBE " + json.dumps({**seen, "master": spark.sparkContext.master}))
spark.stop()
"""

# A background thread keeps an idle py4j connection (as py4j's own finalizer thread does) while the
# driver forks a child; then the thread talks to the JVM again. Logs at INFO, as the jobs do.
FORK_PROBE = """
import json, logging, multiprocessing, threading
from shardlake.session import build_session

logging.basicConfig(level=logging.INFO)
spark = build_session("local[1]", "fork-probe", {"spark.ui.enabled": "false"})
jvm = spark.sparkContext._jvm
ready, go, answers = threading.Event(), threading.Event(), []

def background():
    answers.append(jvm.java.lang.Math.abs(-1))
    ready.set()
    go.wait()
    answers.append(jvm.java.lang.Math.abs(-2))

thread = threading.Thread(target=background)
thread.start()
ready.wait()
child = multiprocessing.get_context("fork").Process(target=int)  # as Horovod checks its build
child.start()
child.join()
go.set()
thread.join()
print("PROBE " + json.dumps({"answers": answers}))
spark.stop()
"""


def _user_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """A shell's environment outside make: no PYSPARK_PYTHON, and a python3 that is not the venv's first on PATH."""
    foreign = tmp_path / "foreign-bin"
    foreign.mkdir(exist_ok=True)
    (foreign / "python3").symlink_to(SYSTEM_PYTHON)
    env = {k: v for k, v in os.environ.items() if k not in ("PYSPARK_PYTHON", "PYSPARK_DRIVER_PYTHON")}
    return {**env, "PATH": f"{foreign}{os.pathsep}{env.get('PATH', '')}", "SPARK_LOCAL_IP": "127.0.0.1", **extra}


def _run(command: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def _probe(command: list[str], env: dict[str, str]) -> dict:
    done = _run(command, env)
    lines = [line for line in done.stdout.splitlines() if line.startswith("PROBE ")]
    assert done.returncode == 0 and lines, done.stdout[-2000:] + done.stderr[-4000:]
    return json.loads(lines[-1].removeprefix("PROBE "))


@pytest.mark.parametrize("master", ["local", "local[1]", "local[*]", "local[4,2]", "local-cluster[2,1,1024]"])
def test_masters_whose_executors_run_on_this_machine_are_local(master):
    assert is_local_master(master)


@pytest.mark.parametrize("master", ["spark://10.0.0.1:7077", "yarn", "k8s://https://api:6443", "mesos://m:5050",
                                    "localhost", "local-cluster"])
def test_cluster_masters_are_not_local(master):
    assert not is_local_master(master)


def test_in_local_mode_workers_default_to_the_drivers_interpreter():
    assert worker_python("local[2]", {}, {}) == sys.executable


def test_a_pyspark_python_in_the_environment_is_kept():
    assert worker_python("local[2]", {"PYSPARK_PYTHON": "/opt/env/python"}, {}) == "/opt/env/python"


def test_spark_pyspark_python_in_the_configuration_wins_over_the_environment():
    # As spark-submit ranks them: the spark.pyspark.python setting, then $PYSPARK_PYTHON.
    chosen = worker_python("local[2]", {"PYSPARK_PYTHON": "/opt/env/python"}, {"spark.pyspark.python": "/opt/conf/python"})
    assert chosen == "/opt/conf/python"


def test_on_a_cluster_the_workers_interpreter_is_left_to_spark():
    assert worker_python("spark://10.0.0.1:7077", {}, {}) is None


@pytest.mark.slow
@pytest.mark.skipif(not SYSTEM_PYTHON.exists(), reason="needs a python3 outside the venv")
def test_a_local_session_outside_make_runs_workers_on_the_drivers_interpreter(tmp_path):
    seen = _probe([sys.executable, "-c", PROBE, "local[1]", "{}"], _user_env(tmp_path))
    assert (seen["executable"], seen["horovod"]) == (sys.executable, True)


@pytest.mark.slow
@pytest.mark.skipif(not SYSTEM_PYTHON.exists(), reason="needs a python3 outside the venv")
def test_spark_pyspark_python_in_the_settings_is_what_workers_run(tmp_path):
    chosen = tmp_path / "chosen-bin" / "python3"
    chosen.parent.mkdir()
    chosen.symlink_to(SYSTEM_PYTHON)
    settings = json.dumps({"spark.pyspark.python": str(chosen)})
    seen = _probe([sys.executable, "-c", PROBE, "local[1]", settings], _user_env(tmp_path))
    assert seen["executable"] == str(chosen)


@pytest.mark.slow
@pytest.mark.skipif(not SYSTEM_PYTHON.exists(), reason="needs a python3 outside the venv")
def test_under_spark_submit_the_submitted_master_wins_over_the_configured_one(tmp_path):
    script = tmp_path / "probe.py"
    script.write_text(PROBE)
    # spark-submit itself finds Spark through PYSPARK_PYTHON (or SPARK_HOME); the driver is the venv's Python.
    env = _user_env(tmp_path, PYSPARK_PYTHON=sys.executable)
    jars = ",".join(str(j) for j in sorted(JARS.glob("*.jar")))
    command = [str(Path(sys.executable).parent / "spark-submit"), "--master", "local[1]", "--jars", jars,
               str(script), "local[2]", "{}"]
    assert _probe(command, env)["master"] == "local[1]"


@pytest.mark.slow
def test_a_forked_child_leaves_the_drivers_jvm_connections_working(tmp_path):
    env = {**os.environ, "SPARK_LOCAL_IP": "127.0.0.1", "PYSPARK_PYTHON": sys.executable}
    done = _run([sys.executable, "-c", FORK_PROBE], env)
    assert (done.returncode, done.stdout.splitlines()[-1:]) == (0, ['PROBE {"answers": [1, 2]}']), done.stderr[-4000:]
    assert "Traceback" not in done.stderr, done.stderr[-4000:]


def test_a_gs_session_without_the_cached_gcs_connector_names_the_jar_and_how_to_fetch_it(tmp_path):
    from shardlake.session import GCS_CONNECTOR_JAR, MissingJarError, connector_jars

    with pytest.raises(MissingJarError, match=rf"{tmp_path}: no {GCS_CONNECTOR_JAR} .*scripts/fetch_jars.sh"):
        connector_jars(tmp_path, ["gs"])


def test_each_object_stores_connector_is_added_only_for_its_scheme(tmp_path):
    from shardlake.session import GCS_CONNECTOR_JAR, S3A_ARTIFACTS, connector_jars

    for name in [GCS_CONNECTOR_JAR, *(f"{artifact}-{version}.jar" for _, artifact, version in S3A_ARTIFACTS)]:
        (tmp_path / name).write_bytes(b"")
    assert [p.name for p in connector_jars(tmp_path, ["gs"])[0]] == [GCS_CONNECTOR_JAR]
    assert [p.name for p in connector_jars(tmp_path, [])[0]] == []


def _compiles(spark) -> int:
    """Generated classes Janino has compiled in this JVM so far (cache hits compile nothing)."""
    return int(spark._jvm.org.apache.spark.metrics.source.CodegenMetrics.METRIC_COMPILATION_TIME().getCount())


def test_a_plan_with_more_generated_classes_than_sparks_default_cache_compiles_once_per_session(spark):
    # An ingest generates ~190 classes; with Spark's default cache of 100 an LRU cycling through
    # them missed on every run, so a warm session recompiled (and re-JIT-ed) all of them each time.
    branches = [spark.range(1).select((F.col("id") * F.lit(i) + F.lit(i)).alias("v")) for i in range(150)]
    plan = reduce(DataFrame.unionByName, branches)
    plan.collect()
    before = _compiles(spark)
    plan.collect()
    assert _compiles(spark) == before
