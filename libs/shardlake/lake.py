"""Where a dataset's tables and models live under a lake root, and nowhere else."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


class LakePathError(ValueError):
    """A table or model path that would leave the configured lake root."""


@dataclass(frozen=True)
class Lake:
    """A lake root folder; every table and model path is derived from it and stays inside it."""

    root: Path

    @classmethod
    def at(cls, root: str | Path) -> "Lake":
        return cls(Path(root).expanduser().resolve())

    def path(self, *parts: str) -> Path:
        """Path under the root; refuses absolute parts and '..' escapes."""
        candidate = self.root.joinpath(*parts).resolve()
        if candidate != self.root and self.root not in candidate.parents:
            raise LakePathError(f"{'/'.join(parts)!r} resolves to {candidate}, outside the lake root {self.root}")
        return candidate

    def table(self, dataset: str, name: str) -> str:
        """Location of one Delta table of a dataset (clean, quarantine, predictions, ...)."""
        return str(self.path(dataset, name))

    def staging(self, *parts: str) -> Path:
        return self.path("_staging", *parts)

    def model_dir(self, dataset: str, model_version: str) -> Path:
        return self.path("models", dataset, model_version)

    def registry(self) -> str:
        return str(self.path("_registry", "models"))
