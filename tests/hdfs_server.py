"""A real HDFS for the tests: Hadoop's MiniDFSCluster (a NameNode and a DataNode in one JVM) on loopback.

Started from ``hadoop-client-minicluster`` (fetched with the other jars by scripts/fetch_jars.sh,
for the tests only) on pip pyspark's own Hadoop client jars; everything that talks to it (Spark's
Hadoop client, delta-rs, the platform's stores, Petastorm) speaks HDFS's RPC protocol over a socket.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pyspark

from cluster import free_port

MINICLUSTER_JARS = ("hadoop-client-minicluster-3.3.4.jar", "junit-4.13.2.jar", "hamcrest-core-1.3.jar")


class HdfsServer:
    """A MiniDFSCluster for the block; ``url`` is its namespace's root (``hdfs://127.0.0.1:PORT``)."""

    def __init__(self, jars: Path | None = None) -> None:
        self.jars = jars or Path(os.environ.get("SHARDLAKE_JARS", Path.home() / ".cache" / "shardlake" / "jars"))
        self.port = free_port()
        self.url = f"hdfs://127.0.0.1:{self.port}"

    def __enter__(self) -> "HdfsServer":
        missing = [j for j in MINICLUSTER_JARS if not (self.jars / j).is_file()]
        if missing:
            raise RuntimeError(f"{self.jars}: no {', '.join(missing)}; run scripts/fetch_jars.sh {self.jars}")
        self._home = Path(tempfile.mkdtemp(prefix="shardlake-hdfs-"))
        details = self._home / "details.json"
        spark_jars = Path(pyspark.__file__).parent / "jars"
        classpath = ":".join([*(str(self.jars / j) for j in MINICLUSTER_JARS), f"{spark_jars}/*"])
        self._log = (self._home / "minicluster.log").open("w")
        self._process = subprocess.Popen(
            ["java", "-Xmx512m", "-cp", classpath, "org.apache.hadoop.test.MiniDFSClusterManager", "-format",
             "-nnport", str(self.port), "-httpport", str(free_port()), "-writeDetails", str(details),
             "-D", "dfs.namenode.resource.du.reserved=0"],
            cwd=self._home, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 120
        while not details.exists():
            if self._process.poll() is not None or time.monotonic() > deadline:
                self.__exit__()
                raise RuntimeError(f"the HDFS minicluster did not start: {(self._home / 'minicluster.log').read_text()[-2000:]}")
            time.sleep(0.2)
        return self

    def __exit__(self, *exc) -> None:
        self._process.terminate()
        try:
            self._process.wait(20)
        except subprocess.TimeoutExpired:
            self._process.kill()
        self._log.close()
        shutil.rmtree(self._home, ignore_errors=True)

    def folder(self, name: str) -> str:
        """A fresh folder's URL in the namespace (nothing is created: HDFS makes parents on write)."""
        return f"{self.url}/{name}-{time.monotonic_ns() % 10**9}"
