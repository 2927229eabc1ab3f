"""A run's or a model's folder on whatever store holds the lake: named files, written whole, read back.

Model weights, specs, cards, checkpoints, training histories, run reports and plots are small
files a job writes and a later job (or another rank) reads by name. ``Folder`` gives them one
spelling on a local folder and on an object store: a location string (a path, or an ``s3a://``
URL), files written whole (a local file is written beside and renamed; an object PUT is atomic),
and names that stay inside the folder. The bytes move through ``shardlake.storage``'s stores.
"""
from __future__ import annotations

import os
from pathlib import Path

from shardlake.storage import LakePathError, StoreSettings, child_location, is_url, store_for

__all__ = ["Folder", "LakePathError"]


class Folder:
    """One folder (a location string) and the store under it; ``settings`` say where an object store is
    (a training rank is handed them: its process has not been told)."""

    def __init__(self, location: str | Path, settings: StoreSettings | None = None):
        text = str(location)
        self.location = text.rstrip("/") if is_url(text) else str(Path(text).expanduser().resolve())
        self.settings = settings
        self.store = store_for(self.location, settings)

    @classmethod
    def of(cls, folder: "Folder | str | Path", settings: StoreSettings | None = None) -> "Folder":
        return folder if isinstance(folder, Folder) else cls(folder, settings)

    @property
    def is_local(self) -> bool:
        return not is_url(self.location)

    def __str__(self) -> str:
        return self.location

    def __repr__(self) -> str:
        return f"Folder({self.location!r})"

    def file(self, *parts: str) -> str:
        """The location of ``parts`` inside this folder; LakePathError for a name that would leave it."""
        return child_location(self.location, *parts)

    def folder(self, *parts: str) -> "Folder":
        return Folder(self.file(*parts), self.settings)

    def make(self) -> "Folder":
        """Create a local folder (and its parents); an object store has no folders to create."""
        if self.is_local:
            Path(self.location).mkdir(parents=True, exist_ok=True)
        return self

    def exists(self, *parts: str) -> bool:
        return self.store.is_file(self.file(*parts))

    def read_bytes(self, *parts: str) -> bytes:
        try:
            return self.store.read_bytes(self.file(*parts))
        except OSError as err:  # pyarrow says "Path does not exist" for local and S3 alike
            if not self.exists(*parts):
                raise FileNotFoundError(f"{self.file(*parts)}: no such file") from err
            raise

    def open(self, *parts: str):
        """A seekable binary file to read in pieces (large weights)."""
        return self.store.open_input(self.file(*parts))

    def read_text(self, *parts: str) -> str:
        return self.read_bytes(*parts).decode()

    def write_bytes(self, name: str, data: bytes) -> str:
        """Write a file whole (readers see the old file or the new one); returns its location."""
        location = self.file(name)
        self.store.write_bytes(location, data)
        return location

    def open_output(self, name: str):
        """A binary stream to write a large file in pieces. On an object store the object appears whole when
        the stream closes; on a local folder the file is visible while written (write beside, then move)."""
        return self.store.open_output(self.file(name))

    def write_text(self, name: str, text: str) -> str:
        return self.write_bytes(name, text.encode())

    def copy(self, source: str, target: str) -> None:
        """Copy a file within the folder, written whole like any other."""
        self.write_bytes(target, self.read_bytes(source))

    def move(self, source: str, target: str) -> None:
        """Rename a file within the folder: atomic on a local folder; on an object store a copy then a
        delete, so a failure between the two leaves both names, never neither."""
        self.store.move(self.file(source), self.file(target))

    def delete(self, name: str) -> None:
        self.store.delete(self.file(name))

    def create_new(self, name: str) -> bool:
        """Create an empty marker file unless it exists; False when it did. Exclusive on a local folder
        (O_EXCL); on an object store a check then a PUT, exclusive for one writer at a time."""
        if self.is_local:
            try:
                os.close(os.open(self.file(name), os.O_CREAT | os.O_EXCL | os.O_WRONLY))
                return True
            except FileExistsError:
                return False
        if self.exists(name):
            return False
        self.write_bytes(name, b"")
        return True

    def names(self) -> list[str]:
        """Every file's name relative to this folder (recursively), sorted."""
        base = self.file()
        return [f[len(base):].lstrip("/") for f in self.store.list_files(base)]
