"""Real Prometheus servers for the tests: Debian's Pushgateway and Prometheus, each its own process, on loopback.

Prometheus scrapes the gateway every second with ``honor_labels: true`` (the pushed job and dataset
labels are kept), as a deployment that collects batch jobs' metrics does. Both use free ports of
their own: a daemon the package may have started on the default ports is never involved.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

from cluster import free_port

# Debian's packages install them here (scripts/install_servers.sh); PATH wins where they are elsewhere.
PUSHGATEWAY = shutil.which("prometheus-pushgateway") or "/usr/bin/prometheus-pushgateway"
PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"
PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"


def _get(url: str, timeout: float = 2.0) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return response.read()


class PrometheusServers:
    """A Pushgateway and a Prometheus that scrapes it, for the block; ``gateway`` and ``prometheus`` are URLs."""

    def __init__(self) -> None:
        self.gateway = f"http://127.0.0.1:{free_port()}"
        self.prometheus = f"http://127.0.0.1:{free_port()}"
        self._processes: list[subprocess.Popen] = []

    def __enter__(self) -> "PrometheusServers":
        self._home = Path(tempfile.mkdtemp(prefix="shardlake-prometheus-"))
        config = self._home / "prometheus.yml"
        config.write_text(json.dumps({  # JSON is YAML
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "scrape_configs": [{"job_name": "pushgateway", "honor_labels": True, "scrape_interval": "1s",
                                "static_configs": [{"targets": [self.gateway.removeprefix("http://")]}]}]}))
        try:
            self._start([PUSHGATEWAY, f"--web.listen-address={self.gateway.removeprefix('http://')}"],
                        self.gateway, "gateway.log")
            self._start([PROMETHEUS, f"--config.file={config}", f"--storage.tsdb.path={self._home / 'data'}",
                         f"--web.listen-address={self.prometheus.removeprefix('http://')}"],
                        self.prometheus, "prometheus.log")
        except BaseException:
            self.__exit__()
            raise
        return self

    def _start(self, command: list[str], url: str, log_name: str) -> None:
        log = open(self._home / log_name, "wb")  # noqa: SIM115 - the process writes it until the end
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=self._home)
        self._processes.append(process)
        deadline = time.monotonic() + 60
        while True:
            try:
                _get(f"{url}/-/ready")
                return
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"{command[0]} did not become ready on {url}: "
                                       f"{(self._home / log_name).read_text(errors='replace')[-2000:]}") from None
                time.sleep(0.2)

    def __exit__(self, *exc) -> None:
        for process in reversed(self._processes):
            process.terminate()
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        shutil.rmtree(self._home, ignore_errors=True)

    def query(self, promql: str) -> list[dict]:
        """An instant query through Prometheus's HTTP API: its result vector."""
        body = json.loads(_get(f"{self.prometheus}/api/v1/query?{urllib.parse.urlencode({'query': promql})}"))
        assert body["status"] == "success", body
        return body["data"]["result"]

    def wait_for(self, promql: str, timeout: float = 60.0) -> list[dict]:
        """Poll ``query`` until it returns a series (Prometheus scrapes the gateway every second)."""
        deadline = time.monotonic() + timeout
        while True:
            result = self.query(promql)
            if result or time.monotonic() > deadline:
                return result
            time.sleep(0.5)
