"""Batch inference throughput: the Spark map stage against its limit and a row-at-a-time UDF, same run.

Three ways to score the same Parquet files with the same model (flights-shaped: 11 numeric and 3
string features, MLP 64-32, key + shard + label passed through, prediction + score out):

  map stage   TabularModel.transform (mapInArrow over Arrow batches, model built once per task
              from a broadcast), Spark local[2], results written to the 'noop' sink.
  limit       one Python process: pyarrow reads the files, the same encode + torch forward pass
              (score_frame) in batches, the same output frame built; torch uses its default
              threads (both cores). Nothing else: what scoring costs without Spark.
  row UDF     a row-at-a-time Python UDF (F.udf) scoring one row per call (model cached per
              task), on a --udf-rows subset: the baseline the map stage replaces.
  Spark read  (diagnostic) Spark reading the same columns into the 'noop' sink with no Python at
              all: the ceiling of any Spark map stage on this machine.

Every figure is the best of --repeat passes, the variants interleaved (the machine is shared; the
best pass is the least disturbed one), after an untimed warm-up that starts Spark's Python workers.

    python bench/infer.py                      # 400k rows in 8 files, 20k rows for the row UDF
    python bench/infer.py --rows 1000000 --quantize

Targets: map stage >= 0.7x the limit and >= 20x the row UDF.

Recorded on the 2-core development machine, Spark local[2] against ONE process, 400k rows in 8
files, batch 8192, best of 3, two runs; other engineers' JVMs and tests were running (load
average 7-10 on 2 cores), so single figures move by 2x between runs:
                                          run 1 (rows/s)   run 2 (rows/s)
    limit, 1 torch thread                      815,000          441,000
    limit, 2 torch threads                     106,000          125,000   (threads fight the load)
    map stage (mapInArrow, local[2])           244,000          180,000
    map stage, int8 model                      287,000          201,000
    row-at-a-time UDF                              575              802
    Spark read only, no Python                 581,000          518,000
    map stage / limit                            0.30x            0.41x   target >= 0.7x: NOT met
    map stage / row UDF                          425x             224x    target >= 20x: met
Session 2, same machine, nothing else running: limit 2,819,156 rows/s (2 torch threads), map stage
598,415 (0.21x), row UDF 2,529 (237x), Spark read only 1,172,302 (0.42x the limit).
The gap to the limit is Spark's JVM side, not the scoring: Spark only reading the same columns
(Parquet -> rows -> noop, no Python at all) reaches ~0.7-1.2x the limit, and the Arrow round trip
to the Python workers and back shares the same 2 cores. mapInPandas was ~3x slower than
mapInArrow here (Python string objects for the key columns). A prototype that let each task
read its files with pyarrow (bypassing Spark's reader) was ~1.7x faster than the map stage, still
far from 0.7x, and would bypass Delta's reader (deletion vectors, column mapping): not adopted.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

warnings.filterwarnings("ignore", category=FutureWarning)
warnings.filterwarnings("ignore", category=DeprecationWarning)

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import torch  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "libs"))

from shardlake.models.tabular import ModelSpec, build_model, save_model  # noqa: E402
from shardlake.scoring import (PREDICTION, SCORE, TabularModel, arrow_features, build_scoring_model,  # noqa: E402
                               score_frame)

KEY = ["year", "month", "day", "carrier", "flight", "origin", "sched_dep_time"]
NUMERIC = ["sched_dep_hour", "distance", "month", "day_of_week", "temp", "humid", "wind_speed", "precip",
           "visib", "seats", "engines"]
CATEGORICAL = ["carrier", "origin", "dest"]
LABEL = "delayed"
PASSTHROUGH = [*KEY, "shard", LABEL]
CARRIERS = ["9E", "AA", "AS", "B6", "DL", "EV", "F9", "FL", "HA", "MQ", "OO", "UA", "US", "VX", "WN", "YV"]
ORIGINS = ["EWR", "JFK", "LGA"]
DESTS = [a + b + c for a in "ABCDE" for b in "LMNOP" for c in "STUV"]  # 100 three-letter codes


def synthetic(rows: int, seed: int = 0) -> pd.DataFrame:
    """Flights-shaped rows: unique keys, realistic feature types, some missing values."""
    rng = np.random.default_rng(seed)
    n = np.arange(rows)
    frame = pd.DataFrame({
        "year": np.full(rows, 2013, np.int32), "month": rng.integers(1, 13, rows).astype(np.int32),
        "day": rng.integers(1, 29, rows).astype(np.int32),
        "carrier": np.array(CARRIERS, dtype=object)[rng.integers(0, len(CARRIERS), rows)],
        "flight": n.astype(np.int32), "origin": np.array(ORIGINS, dtype=object)[rng.integers(0, 3, rows)],
        "sched_dep_time": rng.integers(500, 2359, rows).astype(np.int32),
        "dest": np.array(DESTS, dtype=object)[rng.integers(0, len(DESTS), rows)],
        "sched_dep_hour": rng.integers(5, 24, rows).astype(np.int32), "distance": rng.uniform(80, 4000, rows),
        "day_of_week": rng.integers(1, 8, rows).astype(np.int32), "temp": rng.normal(55, 17, rows),
        "humid": rng.uniform(10, 100, rows), "wind_speed": rng.gamma(2, 5, rows), "precip": rng.exponential(0.01, rows),
        "visib": rng.uniform(0, 10, rows), "seats": rng.integers(20, 400, rows).astype(np.int32),
        "engines": rng.integers(1, 4, rows).astype(np.int32), "delayed": rng.integers(0, 2, rows).astype(np.int32),
        "shard": (n % 8).astype(np.int32),
    })
    frame.loc[::50, "temp"] = np.nan
    return frame


def write_files(frame: pd.DataFrame, folder: Path, files: int) -> list[str]:
    """The rows as ``files`` Parquet files (what a Delta snapshot's data files are)."""
    folder.mkdir(parents=True, exist_ok=True)
    table = pa.Table.from_pandas(frame, preserve_index=False)
    step = -(-len(frame) // files)
    paths = []
    for i in range(files):
        path = folder / f"part-{i:05d}.parquet"
        pq.write_table(table.slice(i * step, step), path)
        paths.append(str(path))
    return paths


def model_folder(folder: Path) -> Path:
    """A saved model of the trained flights model's shape (random weights: speed does not depend on them)."""
    spec = ModelSpec(kind="binary", numeric=NUMERIC, categorical=CATEGORICAL,
                     vocab={"carrier": CARRIERS[:-1], "origin": ORIGINS, "dest": DESTS[:-5]},
                     mean={c: 10.0 for c in NUMERIC}, std={c: 5.0 for c in NUMERIC}, hidden=[64, 32],
                     embedding_dim=8, dropout=0.0)
    save_model(build_model(spec, seed=1), folder)
    return folder


def best_of(repeat: int, run) -> float:
    """Shortest wall time of ``repeat`` calls."""
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return min(times)


def limit_pass(files: list[str], model: TabularModel, batch_size: int, threads: int) -> int:
    """One process: pyarrow reads the files; the map stage's own per-batch work (arrow_features,
    encode, forward, output record batch) with ``threads`` torch threads; returns rows scored."""
    torch.set_num_threads(threads)
    net, device = build_scoring_model(model.spec, model.weights, device=torch.device("cpu"))
    columns = list(dict.fromkeys([*PASSTHROUGH, *NUMERIC, *CATEGORICAL]))
    scored = 0
    for path in files:
        table = pq.read_table(path, columns=columns)
        for batch in table.to_batches(max_chunksize=batch_size):
            prediction, score = score_frame(net, model.spec, arrow_features(batch, model.spec), device)
            out = pa.RecordBatch.from_arrays([batch.column(c) for c in PASSTHROUGH]
                                             + [pa.array(prediction), pa.array(score)],
                                             names=[*PASSTHROUGH, PREDICTION, SCORE])
            scored += out.num_rows
    return scored


def row_udf(spark, model: TabularModel):
    """A row-at-a-time Python UDF: one row per call, the model built once per Python worker."""
    from pyspark.sql import functions as F
    from pyspark.sql import types as T

    spec_dict, weights = model.spec.to_dict(), spark.sparkContext.broadcast(model.weights)
    names = [*NUMERIC, *CATEGORICAL]
    cache: dict = {}

    def score_row(*values):
        if "model" not in cache:
            spec = ModelSpec.from_dict(spec_dict)
            torch.set_num_threads(1)
            cache["spec"] = spec
            cache["model"], cache["device"] = build_scoring_model(spec, weights.value, device=torch.device("cpu"))
        frame = {name: np.array([value], dtype=object) for name, value in zip(names, values)}
        return float(score_frame(cache["model"], cache["spec"], frame, cache["device"])[1][0])

    return F.udf(score_row, T.DoubleType())(*[F.col(c) for c in names])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rows", type=int, default=400_000)
    p.add_argument("--files", type=int, default=8)
    p.add_argument("--udf-rows", type=int, default=20_000, help="rows the row-at-a-time UDF scores")
    p.add_argument("--batch-size", type=int, default=8192)
    p.add_argument("--repeat", type=int, default=2)
    p.add_argument("--master", default="local[2]")
    p.add_argument("--quantize", action="store_true", help="also time the map stage with the int8 model")
    args = p.parse_args(argv)

    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    from pyspark.sql import functions as F

    from shardlake.session import build_session

    work = Path(tempfile.mkdtemp(prefix="bench-infer-"))
    data = synthetic(args.rows)
    files = write_files(data, work / "data", args.files)
    udf_files = write_files(data.iloc[:args.udf_rows], work / "udf", 2)
    model = TabularModel.load(model_folder(work / "model"), "bench")
    cores = os.cpu_count()
    print(f"{args.rows} rows in {args.files} files; {cores} cores; Spark {args.master}; the limit is ONE process "
          f"(pyarrow + torch, best of 1 and 2 torch threads); batch {args.batch_size}; best of {args.repeat}")

    spark = build_session(args.master, "bench-infer", {"spark.ui.enabled": "false", "spark.driver.memory": "3g",
                                                       "spark.sql.shuffle.partitions": "2"})
    spark.sparkContext.setLogLevel("ERROR")
    source, udf_source = spark.read.parquet(*files), spark.read.parquet(*udf_files)

    def map_stage(quantize: bool = False) -> None:
        (model.transform(source, PASSTHROUGH, args.batch_size, quantize=quantize)
         .write.format("noop").mode("overwrite").save())

    def udf_stage() -> None:
        (udf_source.select(*[F.col(c) for c in PASSTHROUGH], row_udf(spark, model).alias(SCORE))
         .write.format("noop").mode("overwrite").save())

    # Untimed warm-up: Python workers started (Spark reuses them), torch imported in each.
    model.transform(udf_source, PASSTHROUGH, args.batch_size).write.format("noop").mode("overwrite").save()
    # (name, rows, pass); passes interleaved, so a burst of load elsewhere hits every variant alike.
    # The limit is the better of one and two torch threads: on a loaded machine two threads can
    # lose more to contention than they gain.
    variants = [("limit, 1 torch thread", args.rows, lambda: limit_pass(files, model, args.batch_size, 1)),
                ("limit, 2 torch threads", args.rows, lambda: limit_pass(files, model, args.batch_size, 2)),
                (f"map stage (mapInArrow, {args.master})", args.rows, map_stage),
                (f"row-at-a-time UDF ({args.master})", args.udf_rows, udf_stage)]
    # Diagnostic: Spark alone (read the same columns, no Python): the ceiling of any Spark map stage here.
    columns = list(dict.fromkeys([*PASSTHROUGH, *NUMERIC, *CATEGORICAL]))
    variants.append((f"Spark read only, no Python ({args.master})", args.rows,
                     lambda: source.select(*[F.col(c) for c in columns]).write.format("noop").mode("overwrite").save()))
    if args.quantize:
        variants.append((f"map stage int8 ({args.master})", args.rows, lambda: map_stage(True)))
    best = {name: float("inf") for name, _, _ in variants}
    for _ in range(args.repeat):
        for name, _, run in variants:
            best[name] = min(best[name], best_of(1, run))
    figures = {name: rows / best[name] for name, rows, _ in variants}
    limit_name = max(("limit, 1 torch thread", "limit, 2 torch threads"), key=figures.get)
    for name, rate in figures.items():
        print(f"  {name:<44} {rate:>12,.0f} rows/s")
    map_rate = figures[f"map stage (mapInArrow, {args.master})"]
    print(f"map stage / limit   = {map_rate / figures[limit_name]:.2f}x  (target >= 0.7x; limit = {limit_name})")
    print(f"map stage / Spark read only = {map_rate / figures[f'Spark read only, no Python ({args.master})']:.2f}x")
    print(f"map stage / row UDF = {map_rate / figures[f'row-at-a-time UDF ({args.master})']:.1f}x  (target >= 20x)")
    spark.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
