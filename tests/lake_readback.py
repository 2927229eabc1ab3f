"""What the pipeline tests on a store read back past the platform: flight keys and the production card.

Each test reads with its own server's clients (delta-rs and pyarrow, or hdfs-native); these helpers
take those readers, so the same check means the same thing on S3, GCS and HDFS.
"""
from __future__ import annotations

import json
from collections.abc import Callable

KEY = ["year", "month", "day", "carrier", "flight", "origin", "sched_dep_time"]


def keys(table) -> list[tuple]:
    """A table's flight keys, sorted."""
    return sorted(zip(*(table.column(c).to_pylist() for c in KEY)))


def production_card(read_table: Callable[[str, list[str]], object], read_object: Callable[[str], bytes]) -> dict:
    """The card of the one production model in the registry. ``read_table(name, columns)``: a table of the
    lake (``_registry/models``); ``read_object(url)``: a file's bytes."""
    registry = read_table("_registry/models", ["stage", "model_dir"]).to_pylist()
    production = [row["model_dir"] for row in registry if row["stage"] == "production"]
    assert len(production) == 1
    return json.loads(read_object(f"{production[0]}/card.json"))
