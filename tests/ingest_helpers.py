"""The toy dataset of the ingest tests: its YAML, its lines and small helpers to run and read it.

Shared by the ingest test modules (tests never import each other's modules).
"""
from __future__ import annotations

from pathlib import Path

from pyspark.sql import functions as F
from pyspark.sql import types as T

from shardlake import delta_io
from shardlake.config import load_config
from shardlake.lake import Lake
from shardlake.stages.ingest import run_ingest

REPO = Path(__file__).resolve().parent.parent
HEADER = "order_id,customer,amount,qty,country,code,updated"
# (line, what happens to it)
LINES = [
    ("1,c1,10.0,2,DE,AB1,1", "clean"),
    ("2,c2,20.5,1,FR,CD2,1", "clean"),
    ("2,c2,20.5,1,FR,CD2,1", "exact duplicate"),
    ("3,c1,30.0,3,DE,EF3,1", "superseded by the next line (older 'updated')"),
    ("3,c1,31.0,3,DE,EF3,2", "clean"),
    ("4,,5.0,1,DE,GH4,1", "required:customer"),
    ("5,c2,-1,1,DE,IJ5,1", "range:amount"),
    ("6,c3,7.0,1,US,KL6,1", "allowed:country"),
    ("7,c3,8.0,1,FR,bad,1", "pattern:code"),
    ("8,c1,NaN,1,FR,MN7,1", "finite:amount (NaN is also above any range)"),
    ("9,c1,12.5.1,1,FR,OP8,1", "type:amount"),
    ("10,c1,1.0", "malformed"),
    ("x,c1,1.0,1,DE,QR9,1", "type:order_id"),
    ("11,c9,4.0,2,FR,ST1,1", "clean; c9 has no customer row: segment and credit filled"),
    ("12,c2,100.0,NA,DE,UV2,1", "clean; qty missing: filled"),
]
CUSTOMERS = ["customer,segment,credit", "c1,gold,100.0", "c2,silver,50.0", "c3,bronze,10.0", "c2,silver,50.0"]
SALT = "toy-salt"
TOY_YAML = """
name: toy
source: {{format: csv, path: {source}}}
columns:
  - {{name: order_id, type: int}}
  - {{name: customer, type: string}}
  - {{name: amount, type: double}}
  - {{name: qty, type: int}}
  - {{name: country, type: string}}
  - {{name: code, type: string}}
  - {{name: updated, type: int}}
key: [order_id]
order_by: updated
joins:
  - name: customers
    source: {{format: csv, path: {customers}}}
    columns:
      - {{name: customer, type: string}}
      - {{name: segment, type: string}}
      - {{name: credit, type: double}}
    keys: {{customer: customer}}
    select: [segment, credit]
derived:
  total: "amount * qty"
rules:
  required: [customer]
  ranges: {{amount: {{min: 0, max: 1000}}}}
  allowed: {{country: [DE, FR]}}
  patterns: {{code: "^[A-Z]{{2}}[0-9]$"}}
  finite: [amount]
fill:
  credit: {{strategy: mean}}
  segment: {{strategy: constant, value: unknown}}
  qty: {{strategy: constant, value: 0}}
shards: 4
splits: {{train: 60, validation: 20, test: 20, salt: {salt}}}
features: {{numeric: [amount, qty, total, credit], categorical: [country, segment]}}
label: {{column: total, kind: regression}}
"""
CLEAN_SCHEMA = T.StructType([
    T.StructField("order_id", T.IntegerType()), T.StructField("customer", T.StringType()),
    T.StructField("amount", T.DoubleType()), T.StructField("qty", T.IntegerType()),
    T.StructField("country", T.StringType()), T.StructField("code", T.StringType()),
    T.StructField("updated", T.IntegerType()), T.StructField("segment", T.StringType()),
    T.StructField("credit", T.DoubleType()), T.StructField("total", T.DoubleType()),
    T.StructField("shard", T.IntegerType()), T.StructField("split", T.StringType(), False),
    T.StructField("_row_hash", T.LongType(), False),
])


def write_csv(path: Path, header: str, lines: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join([header, *lines]) + "\n", encoding="utf-8")
    return path


def toy_config(folder: Path, source: Path, lake_root: Path, *overrides: str, extra_yaml: str = ""):
    """The toy dataset as a YAML file next to its data, loaded like any job loads its config."""
    customers = write_csv(folder / "customers.csv", CUSTOMERS[0], CUSTOMERS[1:])
    yaml_path = folder / "toy.yaml"
    yaml_path.write_text(TOY_YAML.format(source=source, customers=customers, salt=SALT) + extra_yaml)
    return load_config([REPO / "conf" / "base.yaml"], [f"dataset={yaml_path}", f"lake.root={lake_root}",
                                                       *overrides])


def ingest(spark, config, run_id: str, mode: str = "quarantine"):
    return run_ingest(spark, Lake.at(config.lake.root), config.dataset, run_id, REPO, mode=mode)


def table(spark, config, name: str, version: int | None = None):
    return delta_io.read_version(spark, Lake.at(config.lake.root).table("toy", name), version)


def placed(spark, rows: list[tuple], schema: str):
    """Expected rows with shard and split as the issue defines them (a restatement, not the code's)."""
    df = spark.createDataFrame(rows, schema)
    return df.withColumns({
        "shard": F.expr("pmod(xxhash64(order_id), 4)").cast("int"),
        "split": F.expr(f"CASE WHEN pmod(xxhash64('{SALT}', order_id), 100) < 60 THEN 'train' "
                        f"WHEN pmod(xxhash64('{SALT}', order_id), 100) < 80 THEN 'validation' ELSE 'test' END"),
    })
