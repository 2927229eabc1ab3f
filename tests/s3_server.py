"""A real S3-compatible server for the tests: moto's standalone server, in a process of its own, on loopback.

Everything that talks to it (pyarrow, delta-rs, Spark's S3A connector, the platform's stores)
does so over HTTP, through a socket, as it would to a real object store.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pyarrow.fs as pafs

from cluster import free_port, serve
from object_server import ObjectServer
from shardlake.storage import StoreSettings, s3a_settings


class S3Server(ObjectServer):
    """``moto_server`` on a free loopback port for the block; ``endpoint`` is its URL."""

    scheme = "s3"

    def __init__(self, authenticate_after: int | None = None) -> None:
        # moto checks request signatures against its own IAM only after this many requests (None: never).
        self.authenticate_after = authenticate_after
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.settings = StoreSettings(endpoint=self.endpoint, region="us-east-1", path_style=True)

    def __enter__(self) -> "S3Server":
        server = Path(sys.executable).with_name("moto_server")
        env = dict(os.environ)
        if self.authenticate_after is not None:
            env["INITIAL_NO_AUTH_ACTION_COUNT"] = str(self.authenticate_after)
        self._process = serve([str(server), "-H", "127.0.0.1", "-p", str(self.port)], self.port, "moto_server", env)
        return self

    def filesystem(self) -> pafs.S3FileSystem:
        return pafs.S3FileSystem(endpoint_override=f"127.0.0.1:{self.port}", scheme="http", region="us-east-1",
                                 allow_bucket_creation=True)

    def bucket(self, name: str) -> str:
        """A new bucket (a valid S3 name made from ``name``); its name."""
        bucket = self.bucket_name(name)
        self.filesystem().create_dir(bucket)
        return bucket

    def delta_options(self) -> dict[str, str]:
        """delta-rs storage options for this server (credentials come from the environment)."""
        return {"AWS_ENDPOINT_URL": self.endpoint, "AWS_ALLOW_HTTP": "true", "AWS_REGION": "us-east-1"}

    def delta_table(self, url: str):
        """A Delta table on this server (``s3a://`` or ``s3://``) opened by delta-rs, past Spark."""
        from deltalake import DeltaTable

        return DeltaTable(url.replace("s3a://", "s3://", 1), storage_options=self.delta_options())

    def spark_settings(self) -> dict[str, str]:
        return s3a_settings(self.settings)

    def overrides(self) -> list[str]:
        """Configuration overrides that point a job's lake at this server."""
        return [f"lake.endpoint={self.endpoint}", "lake.region=us-east-1", "lake.path_style=true"]
