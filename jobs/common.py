"""Argument parsing and start-up shared by every job."""
from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import sys
import urllib.parse
from pathlib import Path

from shardlake.config import AppConfig, ConfigError, load_config
from shardlake.lake import Lake
from shardlake.ops import lineage
from shardlake.ops.progress import JobProgress, is_live
from shardlake.session import CONNECTOR_SCHEMES, MissingJarError, build_session
from shardlake.storage import StorageError, is_url

DEFAULT_CONF = Path(__file__).resolve().parent.parent / "conf" / "base.yaml"


def parser(description: str) -> argparse.ArgumentParser:
    """Arguments every job takes: --conf files (repeatable) and key=value overrides."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--conf", action="append", default=None, help="YAML config file(s), later wins")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. train.epochs=2")
    p.add_argument("--result-file", type=Path, default=None,
                   help="also write the job's result as JSON to this file (what the Airflow tasks hand on by XCom)")
    return p


def write_result(args: argparse.Namespace, result: dict) -> None:
    """The job's result to --result-file, if given: written whole or not at all (write, then rename)."""
    if args.result_file is None:
        return
    target = args.result_file
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.partial")
    partial.write_text(json.dumps(result, default=str), encoding="utf-8")
    partial.replace(target)


def iso_date(text: str) -> str:
    """argparse type: a YYYY-MM-DD date, returned as that string."""
    try:
        return dt.date.fromisoformat(text).isoformat()
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a date YYYY-MM-DD, got {text!r}") from None


def load(args: argparse.Namespace) -> AppConfig:
    """Load configuration or exit with the validation message, before Spark starts."""
    try:
        return load_config(args.conf or [DEFAULT_CONF], args.overrides)
    except ConfigError as err:
        sys.stderr.write(f"configuration error: {err}\n")
        raise SystemExit(2) from None


def base_dir(args: argparse.Namespace) -> Path:
    """Relative source paths resolve against the folder holding the first config file's conf/."""
    first = Path((args.conf or [DEFAULT_CONF])[0]).resolve()
    return first.parent.parent if first.parent.name == "conf" else first.parent


def connectors(config: AppConfig) -> list[str]:
    """The object stores' Hadoop schemes (``s3a``, ``gs``) of the lake, the source and the join sources:
    the session carries those connectors only (S3A's is 280 MB, which a cluster's executors each fetch)."""
    dataset = config.dataset
    schemes = {urllib.parse.urlsplit(location).scheme.lower() for location in
               [config.lake.root, dataset.source.path, *[join.source.path for join in dataset.joins]]
               if is_url(location)}
    return sorted(schemes & set(CONNECTOR_SCHEMES))


def start(config: AppConfig):
    """Spark session and lake for a loaded configuration."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("py4j", "pyspark", "openlineage"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    lake = Lake.at(config.lake.root, config.lake.store_settings())
    try:  # a missing bucket or refused credentials: one line naming the URL, before Spark starts
        lake.store.check()
    except StorageError as err:
        sys.stderr.write(f"storage error: {err}\n")
        raise SystemExit(2) from None
    warning = lake.single_writer_warning(config.spark.settings)
    if warning:
        logging.getLogger("shardlake").warning("%s", warning)
    settings = {**lake.store.spark_settings(), **config.spark.settings}
    try:
        spark = build_session(config.spark.master, config.spark.app_name, settings,
                              connectors=connectors(config),
                              lineage=lineage.spark_settings(config.monitoring.lineage, lake.root))
    except MissingJarError as err:
        sys.stderr.write(f"installation error: {err}\n")
        raise SystemExit(2) from None
    spark.sparkContext.setLogLevel("WARN")
    return spark, lake


def progress(config: AppConfig, spark, job: str, console) -> JobProgress:
    """The job's live display: bars per running Spark stage on a terminal, one line per step in a log."""
    return JobProgress(job, console, is_live(config.monitoring.progress, console), spark.sparkContext.statusTracker())
