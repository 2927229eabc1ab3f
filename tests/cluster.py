"""A real Spark standalone cluster on 127.0.0.1 for tests: one master and N workers via spark-class.

pip's pyspark has no sbin/start-*.sh, so the daemons are started with spark-class directly. Each
worker gets its own work folder, so tests can find (and kill) the executors of one worker.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import pyspark


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def serve(command: list[str], port: int, name: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    """A server process (output discarded) once it accepts connections on loopback ``port``, within 30 s."""
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), 0.5).close()
            return process
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                raise RuntimeError(f"{name} did not start on port {port}") from None
            time.sleep(0.1)


def spark_env() -> dict[str, str]:
    """Environment for the daemons and for jobs submitted to them: the project's Python everywhere."""
    env = dict(os.environ)
    env.update({
        "SPARK_HOME": str(Path(pyspark.__file__).parent),
        "SPARK_LOCAL_IP": "127.0.0.1",
        "PYSPARK_PYTHON": sys.executable,
        "PYSPARK_DRIVER_PYTHON": sys.executable,
    })
    return env


@dataclass
class Cluster:
    master_url: str
    root: Path
    master: subprocess.Popen
    workers: list[subprocess.Popen] = field(default_factory=list)

    def worker_dir(self, index: int) -> Path:
        return self.root / f"worker{index}"

    def executor_pids(self, index: int) -> list[int]:
        """PIDs of executor JVMs launched by worker ``index``: an executor runs in its worker's folder."""
        out = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True, check=True).stdout
        folder = str(self.worker_dir(index))
        pids = []
        for line in out.splitlines()[1:]:
            if "CoarseGrainedExecutorBackend" not in line:
                continue
            pid = int(line.split(None, 1)[0])
            try:
                if os.readlink(f"/proc/{pid}/cwd").startswith(folder):
                    pids.append(pid)
            except OSError:  # exited meanwhile
                continue
        return pids


def _spark_class(args: list[str], log: Path) -> subprocess.Popen:
    spark_class = Path(pyspark.__file__).parent / "bin" / "spark-class"
    handle = log.open("w")
    return subprocess.Popen([str(spark_class), *args], stdout=handle, stderr=subprocess.STDOUT, env=spark_env(),
                            start_new_session=True)


def _wait_for(log: Path, text: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if log.exists() and text in log.read_text(errors="replace"):
            return
        time.sleep(0.5)
    raise TimeoutError(f"{log}: no {text!r} within {timeout:.0f}s:\n{log.read_text(errors='replace')[-2000:]}")


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


@contextmanager
def standalone_cluster(root: Path, workers: int = 2, cores: int = 1, memory: str = "2g",
                       timeout: float = 120) -> Iterator[Cluster]:
    """Start a master and ``workers`` workers bound to 127.0.0.1; stop them (and their executors) after."""
    root.mkdir(parents=True, exist_ok=True)
    port = free_port()
    master_log = root / "master.log"
    master = _spark_class(["org.apache.spark.deploy.master.Master", "--host", "127.0.0.1", "--port", str(port),
                           "--webui-port", str(free_port())], master_log)
    cluster = Cluster(f"spark://127.0.0.1:{port}", root, master)
    try:
        _wait_for(master_log, "I have been elected leader", timeout)
        for index in range(workers):
            folder = cluster.worker_dir(index)
            folder.mkdir(exist_ok=True)
            log = root / f"worker{index}.log"
            cluster.workers.append(_spark_class(
                ["org.apache.spark.deploy.worker.Worker", "--host", "127.0.0.1", "--cores", str(cores),
                 "--memory", memory, "--work-dir", str(folder), "--webui-port", str(free_port()),
                 cluster.master_url], log))
        for index in range(workers):
            _wait_for(root / f"worker{index}.log", "Successfully registered with master", timeout)
        yield cluster
    finally:
        for index in range(len(cluster.workers)):
            for pid in cluster.executor_pids(index):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        for proc in [*cluster.workers, master]:
            _stop(proc)
