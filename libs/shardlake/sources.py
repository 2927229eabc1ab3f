"""Reading a declared source: the I/O edge of ingest.

Files are found (package://, globs, folders), zip archives extracted, and each file's own
schema (CSV header, Parquet schema, first JSON record) compared with the declared columns
before anything is read: a changed source is refused here, with the file named, unless the
dataset allows schema evolution. ``read_lines`` then hands over the text of the files, one row
per physical line, so that finding records in it, parsing, and the capture of rows that do not
parse happen in pure transforms afterwards (``shardlake.transforms.parse``, put together by
``shardlake.reading``).
"""
from __future__ import annotations

import csv
import glob
import os
import hashlib
import importlib.util
import io
import json
import re
import shutil
import urllib.parse
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from shardlake.folders import Folder
from shardlake.storage import is_url, store_for
from shardlake.transforms.parse import LINE, LINE_BLOCK, LINE_NO

# A source file: a local path, or a URL on an object store (``s3a://bucket/landing/a.csv``).
SourceFile = Path | str

UTF8 = ("utf-8", "utf8")
# Written last into a zip archive's extraction folder on an object store: the members before it are all there.
EXTRACTED = "_EXTRACTED"
EXTRACT_CHUNK = 8 << 20


class SourceError(ValueError):
    """A source that cannot be read as declared: the message names the file and the problem."""


@dataclass(frozen=True)
class SourceGroup:
    """Files that share one record layout: ``names`` are their fields in file order."""

    names: tuple[str, ...]
    files: tuple[SourceFile, ...]


def _remote(path: SourceFile) -> bool:
    return isinstance(path, str) and is_url(path)


def open_binary(path: SourceFile):
    """A seekable binary file of a local path or an object (zip archives and Parquet footers seek)."""
    return store_for(path).open_input(path) if _remote(path) else open(path, "rb")


def _open_text(path: SourceFile, encoding: str):
    return io.TextIOWrapper(open_binary(path), encoding=encoding, errors="replace", newline="")


def file_size(path: SourceFile) -> int:
    return store_for(path).size(path) if _remote(path) else os.path.getsize(path)


def _name(path: SourceFile) -> PurePosixPath:
    return PurePosixPath(path) if _remote(path) else PurePosixPath(Path(path).name)


def _package_path(path: str) -> Path:
    package, _, rel = path.removeprefix("package://").partition("/")
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise SourceError(f"{path}: package {package!r} is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / rel


def resolve_files(path: str, base_dir: Path) -> list[SourceFile]:
    """Expand a source path (package://, relative to base_dir, a folder or a glob; or the same on an object
    store by URL) into existing files."""
    if is_url(path):
        return _resolve_remote(path)
    target = _package_path(path) if path.startswith("package://") else Path(path)
    if not target.is_absolute():
        target = base_dir / target
    if any(ch in str(target) for ch in "*?["):
        files = sorted(Path(p) for p in glob.glob(str(target)) if Path(p).is_file())
    elif target.is_dir():
        files = sorted(p for p in target.iterdir() if p.is_file() and not p.name.startswith((".", "_")))
    else:
        files = [target] if target.exists() else []
    if not files:
        raise SourceError(f"{target}: source not found (no file matches)")
    return files


def _resolve_remote(url: str) -> list[str]:
    """The objects a URL names: a glob's matches, a "folder"'s files (not ``.``/``_`` ones), or the object."""
    store = store_for(url)
    if any(ch in url for ch in "*?["):
        files = store.glob(url)
    elif store.is_file(url):
        files = [url]
    else:
        files = [f for f in store.list_files(url) if "/" not in f[len(url.rstrip("/")) + 1:]
                 and not PurePosixPath(f).name.startswith((".", "_"))]
    if not files:
        raise SourceError(f"{url}: source not found (no object matches)")
    return files


def _content_hash(path: SourceFile) -> str:
    digest = hashlib.sha256()
    with open_binary(path) as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def unzip_to_staging(archive: SourceFile, staging_root: Path | Folder) -> list[SourceFile]:
    """Extract a zip archive (local or on an object store) once into a folder named by its content hash.

    A local ``staging_root`` gets a folder written beside and renamed (atomic); a ``Folder`` on an object
    store (a lake on S3, whose executors may run on any node) gets one object per member, then the
    ``EXTRACTED`` marker: a folder without it was cut short and is extracted again.
    """
    try:
        with open_binary(archive) as handle, zipfile.ZipFile(handle) as zf:
            members = [m for m in zf.infolist() if not m.is_dir() and not m.filename.startswith("__MACOSX")]
            name = f"{_name(archive).stem}-{_content_hash(archive)}"
            if isinstance(staging_root, Folder) and not staging_root.is_local:
                return _unzip_to_store(zf, members, staging_root.folder(name))
            staging_root = Path(str(staging_root))
            target = staging_root / name
            if not target.exists():
                tmp = target.with_name(target.name + ".tmp")
                shutil.rmtree(tmp, ignore_errors=True)
                tmp.mkdir(parents=True)
                for member in members:
                    with zf.open(member) as src, (tmp / Path(member.filename).name).open("wb") as dst:
                        shutil.copyfileobj(src, dst)
                tmp.rename(target)
    except zipfile.BadZipFile as err:
        raise SourceError(f"{archive}: not a valid zip archive ({err})") from err
    return sorted(target / Path(m.filename).name for m in members)


def _unzip_to_store(zf: zipfile.ZipFile, members: list[zipfile.ZipInfo], target: Folder) -> list[str]:
    names = [Path(m.filename).name for m in members]
    if not target.exists(EXTRACTED):
        for member, name in zip(members, names):
            # Streamed: an object appears whole when its upload closes, and a member may be large.
            with zf.open(member) as src, target.open_output(name) as dst:
                shutil.copyfileobj(src, dst, EXTRACT_CHUNK)
        target.write_text(EXTRACTED, "\n".join(names))
    return sorted(target.file(name) for name in names)


def materialise(files: list[SourceFile], compression: str, staging_root: Path | Folder) -> list[SourceFile]:
    """Replace zip archives by their extracted members (under ``staging_root``); other files pass through."""
    out: list[SourceFile] = []
    for path in files:
        is_zip = compression == "zip" or (compression == "auto" and _name(path).suffix == ".zip")
        out.extend(unzip_to_staging(path, staging_root) if is_zip else [path])
    return out


def _first_line(path: SourceFile, encoding: str) -> str:
    with _open_text(path, encoding) as handle:
        return handle.readline().rstrip("\r\n")


def header_line(path: SourceFile, encoding: str) -> str:
    """A file's first line as text, without its line ending (a byte-order mark is kept)."""
    return _first_line(path, encoding)


def _only_blank_lines(path: SourceFile, encoding: str) -> bool:
    """True when every line of the file is empty or spaces (read until the first line that is not)."""
    with _open_text(path, encoding) as handle:
        return all(not line.strip(" \r\n\ufeff") for line in handle)


def read_header(path: SourceFile, delimiter: str, encoding: str) -> list[str]:
    """Column names from a CSV file's first line (a UTF-8 byte-order mark is ignored); empty file: none."""
    first = _first_line(path, encoding).lstrip("\ufeff")
    if not first.strip():
        return []
    return [name.strip() for name in next(csv.reader(io.StringIO(first), delimiter=delimiter))]


def _changed(path: SourceFile, found: Sequence[str], expected: Sequence[str], allow_evolution: bool, what: str) -> None:
    """Refuse ``found`` fields unless they equal ``expected`` or evolution allows added/reordered ones.

    A declared column missing from the file is refused even with evolution: the declared schema
    could not be filled.
    """
    if list(found) == list(expected):
        return
    missing = [c for c in expected if c not in found]
    extra = [c for c in found if c not in expected]
    if allow_evolution and not missing:
        return
    change = "; ".join(part for part in (
        f"missing {missing}" if missing else "",
        f"unexpected {extra}" if extra else "",
        "same columns in another order" if not (missing or extra) else "",
    ) if part)
    hint = ("a declared column is missing, which evolution cannot fill" if allow_evolution and missing
            else "declare the new columns in the dataset's columns, or set allow_schema_evolution: true")
    raise SourceError(f"{path}: source schema changed: {what} {list(found)} differs from the declared "
                      f"columns {list(expected)}: {change}. Refused: {hint}.")


def check_csv_headers(files: list[SourceFile], expected: list[str], delimiter: str, encoding: str,
                      allow_evolution: bool) -> list[SourceGroup]:
    """Group CSV files by header; refuse a header that differs from the declared columns (a schema change).

    With evolution allowed, files with extra or reordered columns are accepted and read by name.
    """
    groups: dict[tuple[str, ...], list[SourceFile]] = {}
    for path in files:
        if file_size(path) == 0:
            continue
        header = read_header(path, delimiter, encoding)
        if not header:
            # A first line that is blank is no header. Only a file of blank lines is accepted
            # (under the declared columns: it has no record to read by them); its blank lines
            # are then read, and counted, like any other.
            if not _only_blank_lines(path, encoding):
                raise SourceError(f"{path}: the first line is blank, but the source declares a header line "
                                  f"(expected columns {expected}). Refused: remove the blank lines before "
                                  "the header, or set header: false.")
            header = list(expected)
        if len(header) == 1 and len(expected) > 1 and header != expected:
            raise SourceError(
                f"{path}: header has 1 column with delimiter {delimiter!r}: wrong delimiter? "
                f"expected columns {expected}"
            )
        _changed(path, header, expected, allow_evolution, "header")
        groups.setdefault(tuple(header), []).append(path)
    return [SourceGroup(names, tuple(paths)) for names, paths in groups.items()]


# Parquet physical types each declared type accepts without a schema change.
_PARQUET_KINDS = {
    "string": ("string", "large_string"),
    "int": ("int8", "int16", "int32", "uint8", "uint16"),
    "bigint": ("int8", "int16", "int32", "int64", "uint8", "uint16", "uint32"),
    "double": ("float", "double", "halffloat", "int8", "int16", "int32"),
    "float": ("float", "halffloat"),
    "boolean": ("bool",),
    "date": ("date32", "date32[day]", "date64"),
    "timestamp": ("timestamp",),
}


def check_parquet_schemas(files: list[SourceFile], columns: Sequence[tuple[str, str]], allow_evolution: bool) -> None:
    """Refuse Parquet files whose columns or column types differ from the declared ones.

    With evolution allowed, extra columns and other types pass (values are then cast, row by
    row, and those that do not convert are quarantined as type errors).
    """
    import pyarrow.parquet as pq

    declared = dict(columns)
    for path in files:
        with open_binary(path) as handle:
            schema = pq.read_schema(handle)
        _changed(path, schema.names, list(declared), allow_evolution, "schema")
        if allow_evolution:
            continue
        for field in schema:
            kind = str(field.type)
            accepted = _PARQUET_KINDS[declared[field.name]]
            if not any(kind == a or kind.startswith(a + "[") for a in accepted):
                raise SourceError(
                    f"{path}: source schema changed: column {field.name} is {kind} in the file, declared "
                    f"{declared[field.name]}. Refused: fix the declared type, or set allow_schema_evolution: "
                    "true to cast it row by row."
                )


def check_json_fields(files: list[SourceFile], expected: list[str], encoding: str, allow_evolution: bool) -> None:
    """Refuse JSON-lines files whose first record has fields that are not declared.

    Missing fields and another field order are not a change: JSON writers commonly leave out
    null fields, and fields are read by name.
    """
    for path in files:
        if file_size(path) == 0:
            continue
        try:
            first = json.loads(_first_line(path, encoding).lstrip("\ufeff"))
        except ValueError:
            continue  # a first line that is not JSON is quarantined as malformed, like any other
        extra = [k for k in first if k not in expected] if isinstance(first, dict) else []
        if extra and not allow_evolution:
            raise SourceError(
                f"{path}: source schema changed: the first record has undeclared fields {extra} "
                f"(declared columns {expected}). Refused: declare them in the dataset's columns, "
                "or set allow_schema_evolution: true to ignore them."
            )


def layout(files: list[SourceFile], fmt: str, columns: Sequence[tuple[str, str]], delimiter: str, header: bool,
           encoding: str, allow_evolution: bool) -> list[SourceGroup]:
    """Check every file's schema against the declared columns and group files by record layout."""
    names = [n for n, _ in columns]
    if fmt == "csv" and header:
        return check_csv_headers(files, names, delimiter, encoding, allow_evolution)
    if fmt == "parquet":
        check_parquet_schemas(files, columns, allow_evolution)
    elif fmt == "json":
        check_json_fields(files, names, encoding, allow_evolution)
    return [SourceGroup(tuple(names), tuple(files))]


def plain_lines(path: SourceFile, header: str | None, encoding: str, quotes: bool = True, block_size: int = 1 << 24) -> bool:
    """True when every line of the file but a header line is a record, read from its bytes.

    That is: no quote character (when ``quotes``; then no quoted field can hold a newline), and
    ``header`` (text without a byte-order mark; None: no header) occurs once only, as the first
    line. False says nothing more: ``reading.scan_lines`` then looks at the lines themselves.
    A byte count needs no Spark job, so small sources are checked this way (``reading``).
    """
    needle = None
    if header is not None:
        if "\ufffd" in header:
            return False  # the header text is not what the file's bytes say
        try:
            needle = header.encode(encoding)
        except (UnicodeError, LookupError):
            return False
        if not needle:
            return False  # a blank header: blank lines are told apart line by line
    found, tail = 0, b""
    with open_binary(path) as handle:
        for block in iter(lambda: handle.read(block_size), b""):
            if quotes and b'"' in block:
                return False
            if needle is not None:
                # An occurrence across two blocks starts in the previous block's last bytes.
                window = tail + block
                found += window.count(needle)
                if found > 1:
                    return False
                tail = window[-(len(needle) - 1):] if len(needle) > 1 else b""
    return needle is None or found == 1


def spark_path(path: SourceFile) -> str:
    """The path as Spark's readers take it: ``file://`` and the absolute path (an object's URL as it
    is), glob characters escaped.

    Not ``Path.as_uri()``: Spark does not undo its percent-escapes (a file named ``a b.csv``
    would not be found), and it reads ``[]{}*?`` as a glob.
    """
    if _remote(path):
        scheme, rest = str(path).split("://", 1)
        return f"{scheme}://{_escape_glob(rest)}"
    return "file://" + _escape_glob(str(Path(path).resolve()))


def _escape_glob(text: str) -> str:
    return re.sub(r"([\\{}\[\]*?])", r"\\\1", text)


def local_path(uri: str) -> Path:
    """The local file of a URI as Spark reports it (``input_file_name``)."""
    return Path(urllib.parse.unquote(urllib.parse.urlparse(uri).path))


def file_of(uri: str) -> SourceFile:
    """The source file a URI names as Spark reports it (``input_file_name``): a local path, or the object's URL."""
    if uri.startswith("file:") or "://" not in uri:
        return local_path(uri)
    return urllib.parse.unquote(uri)


def read_lines(spark: SparkSession, files: Sequence[SourceFile], encoding: str = "UTF-8", ordered: bool = False) -> DataFrame:
    """The files' physical lines as (``_source_file``, ``_line``), decoded from ``encoding`` (a JVM name).

    ``_source_file`` is the file's URI as Spark writes it (``input_file_name``; ``local_path``
    turns it back into the file).

    Read in parallel: a large file is split into blocks, each read by its own task. Lines end at
    LF, CRLF or CR and come without their ending. ``ordered`` adds each line's place in its file
    (``_line_block``: the first byte of the block that read it; ``_line_no``: increasing within a
    block) and splits at LF only, leaving the CR of a CRLF at the end of the line, so that
    newlines inside quoted fields keep their bytes. ``encoding`` must be ASCII-compatible.
    """
    text = (spark.read.option("lineSep", "\n") if ordered else spark.read).text([spark_path(f) for f in files])
    # The text source keeps a line's bytes as they are (UTF-8 is taken as is, so invalid bytes
    # can be found later); other encodings are decoded from those bytes.
    line = F.col("value") if encoding.lower() in UTF8 else F.decode(F.col("value").cast("binary"), encoding)
    where = ([F.col("_metadata.file_block_start").alias(LINE_BLOCK), F.monotonically_increasing_id().alias(LINE_NO)]
             if ordered else [])
    return text.select(F.input_file_name().alias("_source_file"), line.alias(LINE), *where)
