"""bench/ingest.py --nightly on tiny sizes: it runs, and the batch of new days is inserted into every table."""
from __future__ import annotations

import json

import pytest

from bench import ingest as bench


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
    assert not (tmp_path / "floor-batch").exists()
