"""The benchmarks' spec fitter (training/sample.py spec_from_files) against a hand-written vocabulary."""
from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq

from shardlake.training.sample import spec_from_files


def test_vocabularies_fitted_from_files_hold_int_and_bool_values_typed(tmp_path):
    path = tmp_path / "part.parquet"
    pq.write_table(pa.table({"gate": pa.array([3, 3, 1], pa.int32()), "flag": [True, True, False],
                             "delayed": pa.array([1, 0, 1], pa.int32())}), path)
    spec = spec_from_files([str(path)], [], ["gate", "flag"], "binary", "delayed")
    assert json.dumps(spec.vocab, sort_keys=True) == '{"flag": [true, false], "gate": [3, 1]}'
