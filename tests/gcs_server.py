"""A real GCS-compatible server for the tests: fake-gcs-server (a Go program), in a process of its own, on loopback.

``scripts/install_servers.sh`` builds it from its Go module (``make test`` runs it). Everything that
talks to it (pyarrow, delta-rs, Spark's GCS connector, the platform's stores, Petastorm) does so over
HTTP, through a socket, as it would to Google's endpoint; as with Google's own client libraries and
``STORAGE_EMULATOR_HOST``, the requests are unsigned.
"""
from __future__ import annotations

import json
import os
import shutil
import urllib.request
from pathlib import Path

import pyarrow.fs as pafs

from cluster import free_port, serve
from object_server import ObjectServer
from shardlake.storage import StoreSettings, gcs_connector_settings


def server_program() -> Path:
    """fake-gcs-server: $SHARDLAKE_BIN (the Makefile's), else ~/.cache/shardlake/bin, else PATH."""
    folder = Path(os.environ.get("SHARDLAKE_BIN", Path.home() / ".cache" / "shardlake" / "bin"))
    found = folder / "fake-gcs-server"
    if found.is_file():
        return found
    on_path = shutil.which("fake-gcs-server")
    if on_path:
        return Path(on_path)
    raise RuntimeError(f"no fake-gcs-server in {folder} or on PATH; run scripts/install_servers.sh {folder}")


class GcsServer(ObjectServer):
    """fake-gcs-server on a free loopback port for the block; ``endpoint`` is its URL."""

    scheme = "gs"

    def __init__(self) -> None:
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.settings = StoreSettings(endpoint=self.endpoint)

    def __enter__(self) -> "GcsServer":
        # -public-host: the host the XML API (object GETs and PUTs by path, as delta-rs sends them) answers on.
        self._process = serve(
            [str(server_program()), "-scheme", "http", "-host", "127.0.0.1", "-port", str(self.port),
             "-public-host", f"127.0.0.1:{self.port}", "-backend", "memory", "-log-level", "error"],
            self.port, "fake-gcs-server")
        return self

    def filesystem(self) -> pafs.GcsFileSystem:
        return pafs.GcsFileSystem(anonymous=True, endpoint_override=f"127.0.0.1:{self.port}", scheme="http")

    def bucket(self, name: str) -> str:
        """A new bucket (a valid GCS name made from ``name``), created through GCS's JSON API; its name."""
        bucket = self.bucket_name(name)
        request = urllib.request.Request(f"{self.endpoint}/storage/v1/b", data=json.dumps({"name": bucket}).encode(),
                                         headers={"Content-Type": "application/json"}, method="POST")
        urllib.request.urlopen(request, timeout=10).close()
        return bucket

    def delta_table(self, url: str):
        """A Delta table on this server opened by delta-rs, past Spark."""
        from deltalake import DeltaTable

        return DeltaTable(url, storage_options=self.delta_options())

    def delta_options(self) -> dict[str, str]:
        """delta-rs storage options for this server (object_store reaches an emulator through a keyless
        service account's base URL)."""
        return {"google_service_account_key": json.dumps({
            "gcs_base_url": self.endpoint, "disable_oauth": True, "client_email": "", "private_key": "",
            "private_key_id": ""})}

    def spark_settings(self) -> dict[str, str]:
        return gcs_connector_settings(self.settings)

    def overrides(self) -> list[str]:
        """Configuration overrides that point a job's lake at this server."""
        return [f"lake.endpoint={self.endpoint}"]
