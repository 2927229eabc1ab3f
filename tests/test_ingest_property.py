"""Property: on any generated dirty flights data, rows read = clean + quarantined + duplicates, exactly.

Few examples (each is a full ingest with the real flights configuration, joins included).
"""
from __future__ import annotations

import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pyspark.sql import functions as F

from shardlake import delta_io, synth
from shardlake.config import load_config
from shardlake.lake import Lake
from shardlake.stages.ingest import run_ingest

REPO = Path(__file__).resolve().parent.parent
rates = st.floats(min_value=0.0, max_value=0.3, allow_nan=False)


@settings(max_examples=2, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(rows=st.integers(min_value=20, max_value=300), seed=st.integers(min_value=0, max_value=10_000),
       mess=st.builds(synth.Mess, rates, rates, rates, rates, rates, rates, rates, rates))
def test_every_row_read_is_clean_quarantined_or_a_counted_duplicate(spark, rows, seed, mess):
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        lines = synth.flights_lines(spark, rows, seed, mess, partitions=2)
        synth.write_csv(lines, folder / "gen")
        config = load_config([REPO / "conf" / "base.yaml"],
                             [f"lake.root={folder / 'lake'}", f"dataset.source.path={folder / 'gen'}/*.csv",
                              "dataset.shards=4"])
        lake = Lake.at(config.lake.root)
        report = run_ingest(spark, lake, config.dataset, "prop", REPO)
        clean = delta_io.read_version(spark, lake.table("flights", "clean"))
        quarantine = delta_io.read_version(spark, lake.table("flights", "quarantine"))

        assert report.rows_read == rows
        assert report.rows_read == report.clean_rows + report.quarantined + report.duplicates_removed
        assert (clean.count(), quarantine.count()) == (report.clean_rows, report.quarantined)
        assert clean.select(*config.dataset.key).distinct().count() == report.clean_rows
        # Every quarantined record is an input line, verbatim.
        assert quarantine.join(lines, on=F.col("raw") == F.col("line"), how="left_anti").count() == 0
