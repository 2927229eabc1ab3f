"""jobs/ingest.py as a user runs it: a layout change is refused with one message, --rebuild-layout applies it."""
from __future__ import annotations

import pytest

from jobs import ingest as ingest_job

from ingest_helpers import HEADER, table, toy_config, write_csv

pytestmark = pytest.mark.reliability


def test_a_layout_change_exits_2_with_the_way_out_and_the_rebuild_applies_it(spark, tmp_path, capsys):
    source = write_csv(tmp_path / "orders.csv", HEADER, ["1,c1,10.0,2,DE,AB1,1", "2,c2,20.5,1,FR,CD2,1"])
    toy_config(tmp_path, source, tmp_path / "lake")  # writes toy.yaml and customers.csv next to the data
    args = ["--conf", "conf/base.yaml", f"dataset={tmp_path / 'toy.yaml'}", f"lake.root={tmp_path / 'lake'}"]
    assert ingest_job.main(["--run-id", "first", *args]) == 0
    capsys.readouterr()
    assert ingest_job.main(["--run-id", "second", *args, "dataset.shards=8"]) == 2
    refused = capsys.readouterr().err
    assert "ingest refused:" in refused and "dataset.shards is '8'" in refused and "--rebuild-layout" in refused
    assert "Traceback" not in refused
    assert ingest_job.main(["--rebuild-layout", *args, "dataset.shards=8"]) == 0
    assert ingest_job.main(["--run-id", "third", *args, "dataset.shards=8"]) == 0
    config = toy_config(tmp_path, source, tmp_path / "lake", "dataset.shards=8")
    shards = sorted((r["order_id"], r["shard"]) for r in table(spark, config, "clean").collect())
    expected = sorted((r[0], r[1]) for r in spark.sql(
        "SELECT id, CAST(pmod(xxhash64(id), 8) AS INT) FROM VALUES (1), (2) AS t(id)").collect())
    assert shards == expected
