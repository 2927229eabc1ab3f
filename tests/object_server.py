"""What the tests' object-store servers (S3, GCS) share: reading objects and Delta tables past the platform,
new buckets' names, pointing a running session at the server, and stopping it."""
from __future__ import annotations

import re
import time

import pyarrow.fs as pafs


class ObjectServer:
    """Reads of one server's objects with pyarrow; subclasses say how to reach it (``filesystem``,
    ``delta_table``, ``spark_settings``), how delta-rs spells its URLs (``scheme``), and start ``_process``."""

    scheme = ""

    def filesystem(self) -> pafs.FileSystem:
        raise NotImplementedError

    def delta_table(self, url: str):
        raise NotImplementedError

    def spark_settings(self) -> dict[str, str]:
        raise NotImplementedError

    def __exit__(self, *exc) -> None:
        self._process.terminate()
        self._process.wait(10)

    @staticmethod
    def bucket_name(name: str) -> str:
        """A bucket name valid on S3 and GCS, made from ``name`` and unique within the test run."""
        return re.sub(r"[^a-z0-9-]", "-", name.lower())[:50].strip("-") + f"-{time.monotonic_ns() % 10**9}"

    def point(self, spark) -> None:
        """Point a running session's connector at this server (the test session starts before it)."""
        hadoop = spark.sparkContext._jsc.hadoopConfiguration()
        for key, value in self.spark_settings().items():
            hadoop.set(key.removeprefix("spark.hadoop."), value)

    def read_delta(self, url: str, columns: list[str] | None = None):
        """A table's current files as delta-rs lists them, read by pyarrow from this server.

        (delta-rs 1.6's own pyarrow dataset of a partitioned table needs a newer pyarrow than the stack's 14.)
        """
        import pyarrow.parquet as pq

        files = [f.removeprefix(f"{self.scheme}://") for f in self.delta_table(url).file_uris()]
        return pq.read_table(files, filesystem=self.filesystem(), columns=columns)

    def write_object(self, url: str, data: bytes) -> None:
        with self.filesystem().open_output_stream(url.split("://", 1)[-1]) as out:
            out.write(data)

    def read_object(self, url: str) -> bytes:
        """An object's bytes (``scheme://bucket/key`` or ``bucket/key``), read straight from the server."""
        with self.filesystem().open_input_stream(url.split("://", 1)[-1]) as stored:
            return stored.read()

    def object_keys(self, prefix: str) -> list[str]:
        """Every object under ``bucket/prefix``, as ``bucket/key`` paths."""
        selector = pafs.FileSelector(prefix, recursive=True, allow_not_found=True)
        return sorted(i.path for i in self.filesystem().get_file_info(selector) if i.type == pafs.FileType.File)
