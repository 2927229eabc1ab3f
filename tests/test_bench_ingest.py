"""bench/ingest.py on tiny inputs: the one-pass bound keeps what the ingest would, and --nightly runs."""
from __future__ import annotations

import json

import pytest
from pyspark.testing import assertDataFrameEqual

from bench import ingest as bench
from shardlake.config import load_config

HEADER = ("year,month,day,dep_time,sched_dep_time,dep_delay,arr_time,sched_arr_time,arr_delay,carrier,flight,"
          "tailnum,origin,dest,air_time,distance,hour,minute,time_hour")
FIRST = "2013,1,1,517,515,2,830,819,11,UA,1545,N14228,EWR,IAH,227,1400,5,15,2013-01-01 05:00:00"
SECOND = "2013,1,1,533,529,4,850,830,20,UA,1714,N24211,LGA,IAH,227,1416,5,29,2013-01-01 05:00:00"


def test_the_one_pass_bound_writes_one_row_per_clean_key_and_no_rejected_row(spark, repo, tmp_path):
    source = tmp_path / "source"
    source.mkdir()
    lines = [HEADER, FIRST, FIRST,  # an exact duplicate: one copy stays
             SECOND,
             "2013,13,1,544,545,-1,1004,1022,-18,B6,725,N804JB,JFK,BQN,183,1576,5,45,2013-01-01 05:00:00",  # month 13
             "2013,1,1,x,600,-6,812,837,-25,DL,461,N668DN,LGA,ATL,116,762,6,0,2013-01-01 06:00:00"]  # malformed
    (source / "flights.csv").write_text("\n".join(lines) + "\n")
    config = load_config([repo / "conf" / "base.yaml"], [f"lake.root={tmp_path / 'lake'}"])
    out = tmp_path / "bound"

    bench.one_pass_bound(spark, config, source, out, tmp_path / "lake")

    key = "year int, month int, day int, carrier string, flight int, origin string, sched_dep_time int"
    expected = spark.createDataFrame([(2013, 1, 1, "UA", 1545, "EWR", 515), (2013, 1, 1, "UA", 1714, "LGA", 529)], key)
    written = spark.read.format("delta").load(str(out)).select(*config.dataset.key)
    assertDataFrameEqual(written, expected, checkRowOrder=False)


@pytest.mark.slow
def test_the_nightly_benchmark_merges_the_same_batch_into_each_table_and_an_empty_one(spark, tmp_path, capsys):
    args = bench.argparse.Namespace(work=str(tmp_path), seed=13, batch_rows=300, batch_days=1,
                                    table_rows=[600, 1200], overrides=[])
    result = bench.nightly(spark, args)
    clean = {rows: t["inserted"] for rows, t in result["tables"].items()}
    # The batch's keys are new days: every clean row of it is inserted, into either table alike.
    assert clean[600] == clean[1200] > 0 and {t["updated"] for t in result["tables"].values()} == {0}
    assert json.loads(capsys.readouterr().out.splitlines()[0])["table_rows"] == 600
    assert result["empty_ratio"] == pytest.approx(result["batch_copy_s"] / result["batch_into_empty_s"], abs=1e-3)
    assert result["empty_floor_ratio"] == pytest.approx(result["batch_copy_s"] / result["batch_floor_s"], abs=1e-3)
    assert result["empty_bound_ratio"] == pytest.approx(result["batch_copy_s"] / result["batch_bound_s"], abs=1e-3)
    assert not (tmp_path / "floor-batch").exists() and not (tmp_path / "bound-batch").exists()
