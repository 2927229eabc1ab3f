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


def test_a_source_named_by_interval_without_a_logical_date_is_refused_before_spark(tmp_path, capsys):
    toy_config(tmp_path, tmp_path / "orders.csv", tmp_path / "lake")
    args = ["--conf", "conf/base.yaml", f"dataset={tmp_path / 'toy.yaml'}", f"lake.root={tmp_path / 'lake'}",
            f"dataset.source.path={tmp_path}/landing/{{ds}}/orders.csv"]
    assert ingest_job.main(args) == 2
    refused = capsys.readouterr().err
    assert "ingest refused:" in refused and "--logical-date" in refused and "Traceback" not in refused
    assert not (tmp_path / "lake").exists()


def test_the_ingest_writes_its_result_for_the_next_task(spark, tmp_path):
    import json

    landing = write_csv(tmp_path / "landing" / "2024-01-05" / "orders.csv", HEADER, ["1,c1,10.0,2,DE,AB1,1"])
    toy_config(tmp_path, landing, tmp_path / "lake")
    result = tmp_path / "out" / "result.json"
    args = ["--conf", "conf/base.yaml", f"dataset={tmp_path / 'toy.yaml'}", f"lake.root={tmp_path / 'lake'}",
            f"dataset.source.path={tmp_path}/landing/{{ds}}/orders.csv"]
    assert ingest_job.main(["--logical-date", "2024-01-05", "--result-file", str(result), *args]) == 0
    written = json.loads(result.read_text())
    history = spark.sql(f"DESCRIBE HISTORY delta.`{tmp_path / 'lake' / 'toy' / 'clean'}`").collect()
    committed = max(r["version"] for r in history if (r["operation"] != "CREATE TABLE"))
    assert (written["run_id"], written["logical_date"], written["table_version"], written["rows_read"]) == (
        "ingest-toy-2024-01-05", "2024-01-05", committed, 1)
