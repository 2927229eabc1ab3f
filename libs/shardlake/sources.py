"""Reading a declared source into raw records: the I/O edge of ingest.

Every source becomes one DataFrame of raw records (``_raw`` text plus ``_source_file``), so that
parsing, and the capture of rows that do not parse, happen in pure transforms afterwards.
"""
from __future__ import annotations

import csv
import glob
import hashlib
import importlib.util
import io
import shutil
import zipfile
from dataclasses import dataclass
from pathlib import Path

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T


class SourceError(ValueError):
    """A source that cannot be read as declared: the message names the file and the problem."""


@dataclass(frozen=True)
class ResolvedSource:
    files: list[Path]
    format: str
    delimiter: str
    header: bool
    encoding: str


def _package_path(path: str) -> Path:
    package, _, rel = path.removeprefix("package://").partition("/")
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise SourceError(f"{path}: package {package!r} is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / rel


def resolve_files(path: str, base_dir: Path) -> list[Path]:
    """Expand a source path (package://, relative to base_dir, or a glob) into existing files."""
    target = _package_path(path) if path.startswith("package://") else Path(path)
    if not target.is_absolute():
        target = base_dir / target
    if any(ch in str(target) for ch in "*?["):
        files = sorted(Path(p) for p in glob.glob(str(target)))
    elif target.is_dir():
        files = sorted(p for p in target.iterdir() if p.is_file() and not p.name.startswith((".", "_")))
    else:
        files = [target] if target.exists() else []
    if not files:
        raise SourceError(f"{target}: source not found (no file matches)")
    return files


def _content_hash(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def unzip_to_staging(archive: Path, staging_root: Path) -> list[Path]:
    """Extract a zip archive once into a folder named by its content hash; atomic via rename."""
    try:
        with zipfile.ZipFile(archive) as zf:
            members = [m for m in zf.infolist() if not m.is_dir() and not m.filename.startswith("__MACOSX")]
            target = staging_root / f"{archive.stem}-{_content_hash(archive)}"
            if not target.exists():
                tmp = target.with_name(target.name + ".tmp")
                shutil.rmtree(tmp, ignore_errors=True)
                tmp.mkdir(parents=True)
                for member in members:
                    name = Path(member.filename).name
                    with zf.open(member) as src, (tmp / name).open("wb") as dst:
                        shutil.copyfileobj(src, dst)
                tmp.rename(target)
    except zipfile.BadZipFile as err:
        raise SourceError(f"{archive}: not a valid zip archive ({err})") from err
    return sorted(target / Path(m.filename).name for m in members)


def materialise(files: list[Path], compression: str, staging_root: Path) -> list[Path]:
    """Replace zip archives by their extracted members; other files pass through."""
    out: list[Path] = []
    for path in files:
        is_zip = compression == "zip" or (compression == "auto" and path.suffix == ".zip")
        out.extend(unzip_to_staging(path, staging_root) if is_zip else [path])
    return out


def read_header(path: Path, delimiter: str, encoding: str) -> list[str]:
    """Column names from a CSV file's first line; an empty file has none."""
    with path.open("r", encoding=encoding, errors="replace", newline="") as handle:
        first = handle.readline()
    if not first.strip():
        return []
    return [name.strip() for name in next(csv.reader(io.StringIO(first), delimiter=delimiter))]


def check_csv_headers(files: list[Path], expected: list[str], delimiter: str, encoding: str,
                      allow_evolution: bool) -> None:
    """Refuse a CSV source whose header differs from the declared columns (a schema change)."""
    for path in files:
        if path.stat().st_size == 0:
            continue
        header = read_header(path, delimiter, encoding)
        if header == expected:
            continue
        missing = [c for c in expected if c not in header]
        extra = [c for c in header if c not in expected]
        if allow_evolution and not missing:
            continue
        if len(header) == 1 and len(expected) > 1:
            raise SourceError(
                f"{path}: header has 1 column with delimiter {delimiter!r}: wrong delimiter? "
                f"expected columns {expected}"
            )
        raise SourceError(
            f"{path}: source schema changed: header {header} differs from the declared columns; "
            f"missing {missing}, unexpected {extra}, order {'differs' if not (missing or extra) else 'n/a'}. "
            "Update the dataset's columns (and set allow_schema_evolution) to accept it."
        )


def read_raw_records(spark: SparkSession, files: list[Path], fmt: str, header: bool) -> DataFrame:
    """Raw records as (_raw string, _source_file string, _line bigint)."""
    uris = [f.resolve().as_uri() for f in files if f.stat().st_size > 0]
    schema = T.StructType([T.StructField("_raw", T.StringType()), T.StructField("_source_file", T.StringType())])
    if not uris:
        return spark.createDataFrame([], schema)
    if fmt == "parquet":
        df = spark.read.parquet(*uris)
        return df.select(F.to_json(F.struct(*df.columns)).alias("_raw"), F.input_file_name().alias("_source_file"))
    lines = spark.read.text(uris).select(F.col("value").alias("_raw"), F.input_file_name().alias("_source_file"))
    if fmt == "csv" and header:
        # The first line of each file is its header; only it has the file's first byte offset,
        # which the text source does not expose, so drop lines equal to that file's header text.
        headers = {f.resolve().as_uri(): f.open("r", errors="replace").readline().rstrip("\r\n") for f in files
                   if f.stat().st_size > 0}
        header_map = F.create_map(*[x for uri, h in headers.items() for x in (F.lit(uri), F.lit(h))])
        lines = lines.where(F.col("_raw") != F.coalesce(header_map[F.col("_source_file")], F.lit("\u0000")))
    return lines.where(F.length(F.trim(F.col("_raw"))) > 0)
