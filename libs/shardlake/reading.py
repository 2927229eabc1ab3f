"""Reading a declared source into parsed rows: one row per record, per blank line, per repeated header.

``read_parsed`` is the whole read of ingest: find the files, check their schemas (``sources``),
find the records in their text, and parse them with the declared schema (``transforms.parse``).
Nothing is dropped or split on the way: every record of the input is one row, a blank line or
a repeated header line (say, from concatenated files) is one row of its own kind, so the
ingest can account for every line.

How CSV text becomes records, and why this way:

- A quoted field may hold newlines (RFC 4180), so a line is not always a record; but finding
  records in a file in order is sequential, one task per file. Most files have no quoted
  newline, and a large one must still be read in parallel. So one cheap pass over the lines
  first finds, per file, whether any line ends inside an open quote (and counts the lines equal
  to the file's header). Files without such a line are read split by lines, in parallel: there
  every line is a record. Files with one are read in order and their lines stitched into
  records (``parse.stitch_records``): one task per such file. A quote that is still open at
  the end of the file never closed, so it holds no newline: the line that opened it is one
  malformed record, and the lines after it are records again. ``source.multiline: false``
  skips the quote check: every line is then a record, and one that ends inside a quote is
  malformed.
- The text read keeps each record's exact text (``_raw``), bytes as they arrived, decoded from
  the declared encoding: a rejected row shows the record as it was, a multi-line record with
  its newlines (LF, or CRLF as in the file). Nothing is reconstructed from parsed values. Only
  the final line ending is not part of ``_raw``, nor a UTF-8 byte-order mark at the very start
  of a file (the text source drops it).
- The first line of each file with ``header: true`` is its header, not a row. Lines are read
  without their position in the file where they are read in parallel, so the lines equal to the
  header are set aside there, and all but the first come back as ``header`` rows (the count is
  from the first pass; the lines are identical, so which one was first does not matter).

Encodings must be ASCII-compatible (UTF-8, Latin-1, Windows-125x, ...): lines are split at the
byte of LF. In files with quoted newlines records end at LF or CRLF (a lone CR is data).
"""
from __future__ import annotations

import codecs
from collections.abc import Sequence
from dataclasses import dataclass
from functools import reduce
from pathlib import Path

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from shardlake import sources
from shardlake.config import SourceSpec
from shardlake.folders import Folder
from shardlake.transforms import parse as P
from shardlake.transforms.parse_csv import parse_typed

RECORDS_SCHEMA = T.StructType([T.StructField("_raw", T.StringType()), T.StructField("_source_file", T.StringType()),
                               T.StructField(P.RECORD_KIND, T.StringType())])


@dataclass(frozen=True)
class LineScan:
    """What the first pass found in one CSV file: a line ending inside a quote, lines equal to the header."""

    uri: str  # the file as Spark names it in ``_source_file``
    opens_quote: bool = False
    headers: int = 0  # lines equal to the header text
    bom_headers: int = 0  # lines equal to a byte-order mark and the header text


def read_parsed(spark: SparkSession, source: SourceSpec, columns: list[tuple[str, str]], staging: Path | Folder,
                base_dir: Path, allow_evolution: bool) -> DataFrame:
    """The source's rows, parsed: ``_raw``, ``_source_file``, ``_record_kind``, the declared columns, ``_parse_errors``.

    One row per record (kind ``record``), per blank line (``blank``) and per repeated header
    line (``header``); the first line of a CSV file with a header is not a row. ``_raw`` is the
    record's text as it arrived (all its lines, without the final line ending; a Parquet row:
    its JSON), ``_source_file`` the file's URI. Records carry their typed values and their parse
    errors (``malformed``, ``encoding``, ``type:<col>``); blank and header rows have null values
    and no errors. Zip archives are extracted under ``staging`` (a local folder, or a lake's folder on an
    object store); relative paths start at ``base_dir``. A source whose schema differs from the
    declared one is refused before any Spark job (``sources.SourceError``), unless ``allow_evolution``.
    """
    declared = [name for name, _ in columns]
    files = sources.materialise(sources.resolve_files(source.path, base_dir), source.compression, staging)
    groups = sources.layout(files, source.format, columns, source.delimiter, source.header, source.encoding,
                            allow_evolution) or [sources.SourceGroup(tuple(declared), ())]
    return reduce(DataFrame.unionByName,
                  [parse(read_records(spark, source, group.files), source, columns, group.names) for group in groups])


def parse(records: DataFrame, source: SourceSpec, columns: Sequence[tuple[str, str]],
          names: Sequence[str]) -> DataFrame:
    """Records (``_raw``, ``_source_file``, ``_record_kind``) to declared, typed columns.

    ``names`` are the records' own fields, in file order (a CSV header's).
    """
    if source.format == "csv":
        return parse_typed(records, list(names), columns, source.delimiter, source.null_values)
    declared = [name for name, _ in columns]
    fields = P.split_fields(records, list(names), source.format, source.delimiter, keep=declared)
    return P.cast_columns(fields, columns, source.null_values)


def read_records(spark: SparkSession, source: SourceSpec, files: Sequence[sources.SourceFile]) -> DataFrame:
    """The files' records as (``_raw``, ``_source_file``, ``_record_kind``): see ``read_parsed``."""
    present = [f for f in files if sources.file_size(f) > 0]
    if not present:
        return spark.createDataFrame([], RECORDS_SCHEMA)
    if source.format == "parquet":
        df = spark.read.parquet(*[sources.spark_path(f) for f in present])
        return df.select(F.to_json(F.struct(*df.columns)).alias("_raw"), F.input_file_name().alias("_source_file"),
                         F.lit(P.RECORD).alias(P.RECORD_KIND))
    encoding = java_charset(spark, source.encoding)
    if source.format == "json":
        return _as_records(sources.read_lines(spark, present, encoding))
    return csv_records(spark, present, encoding, source.delimiter, source.header, getattr(source, "multiline", True))


def java_charset(spark: SparkSession, encoding: str) -> str:
    """The JVM's name for ``encoding`` (Python's spelling, such as latin-1, is accepted too).

    Refuses encodings that are unknown or not ASCII-compatible: lines are found at the LF byte.
    """
    try:
        python_name = codecs.lookup(encoding).name
    except LookupError as err:
        raise sources.SourceError(f"unknown encoding {encoding!r}") from err
    if '\n,"a'.encode(python_name) != b'\n,"a':
        raise sources.SourceError(f"encoding {encoding!r} is not ASCII-compatible: lines cannot be found in it; "
                                  "convert the files to UTF-8")
    supported = spark.sparkContext._jvm.java.nio.charset.Charset.isSupported
    for name in (encoding, python_name):
        if supported(name):
            return name
    raise sources.SourceError(f"encoding {encoding!r} is not known to the JVM")


def _as_records(lines: DataFrame) -> DataFrame:
    """Lines that are each one record, with their kind (blank or record)."""
    return lines.select(F.col(P.LINE).alias("_raw"), "_source_file", P.record_kind(F.col(P.LINE)).alias(P.RECORD_KIND))


def _header_of(headers: dict[str, str]):
    """The header text (without a byte-order mark) of the row's file, looked up by its URI."""
    pairs = [x for uri, text in headers.items() for x in (F.lit(uri), F.lit(text.lstrip(P.BOM)))]
    return F.create_map(*pairs)[F.col("_source_file")] if pairs else F.lit(None).cast("string")


def _is_header(line, texts: Sequence[str], headers: dict[str, str]):
    """True for a line equal to its file's header (``headers``: by URI), with or without a byte-order mark.

    A cheap test against every header text (``texts``) comes first: most lines fail it, and
    only the rest look up their own file's header.
    """
    candidates = sorted({t for h in texts for t in (h.lstrip(P.BOM), P.BOM + h.lstrip(P.BOM))})
    own = _header_of(headers)
    return line.isin(candidates) & F.coalesce((line == own) | (line == F.concat(F.lit(P.BOM), own)), F.lit(False))


def scan_lines(spark: SparkSession, files: Sequence[sources.SourceFile], encoding: str, delimiter: str,
               headers: dict[sources.SourceFile, str], quotes: bool) -> dict[sources.SourceFile, LineScan]:
    """The first pass (a Spark job): per file, whether a line ends inside a quote (when ``quotes``)
    and how many lines equal its header in ``headers`` (with and without a byte-order mark).

    Only lines with a quote or equal to a header text are grouped by file (in most files: a
    handful). A file none of whose lines is either is not in the result.
    """
    lines = sources.read_lines(spark, files, encoding)
    line = F.col(P.LINE)
    quoted = line.contains('"') if quotes else F.lit(False)
    candidates = sorted({t for h in headers.values() for t in (h.lstrip(P.BOM), P.BOM + h.lstrip(P.BOM))})
    # Spark names a file in its own spelling of a URI, so each file's own header is picked by
    # path afterwards, from a count per header text (files of one layout share one or a few).
    header = line.isin(candidates) if candidates else F.lit(False)
    found = lines.where(quoted | header).groupBy("_source_file").agg(
        F.max(P.opens_quote(line, delimiter) if quotes else F.lit(False)).alias("opens_quote"),
        *[F.count(F.when(line == text, 1)).alias(f"_n{i}") for i, text in enumerate(candidates)])
    scans = {}
    for row in found.collect():
        path = sources.file_of(row["_source_file"])
        own = headers.get(path, "").lstrip(P.BOM)
        count = {text: row[f"_n{i}"] for i, text in enumerate(candidates)}
        scans[path] = LineScan(row["_source_file"], bool(row["opens_quote"]), count.get(own, 0),
                               count.get(P.BOM + own, 0))
    return scans


def _repeated_headers(spark: SparkSession, headers: dict[str, str], scans: Sequence[LineScan]) -> DataFrame:
    """One row per header line after a file's first: the lines that the line read set aside.

    The text source drops a byte-order mark at the start of a file, so the first line always
    counts among the header lines without one.
    """
    rows = []
    for scan in scans:
        text = headers[scan.uri].lstrip(P.BOM)
        rows += [(text, scan.uri, scan.headers - 1), (P.BOM + text, scan.uri, scan.bom_headers)]
    counts = spark.createDataFrame([r for r in rows if r[2] > 0], "_raw string, _source_file string, n long")
    repeated = counts.select("_raw", "_source_file", F.explode(F.sequence(F.lit(1), F.col("n"))).alias("_i"))
    kind = F.when(F.trim(F.col("_raw")) == "", F.lit(P.BLANK)).otherwise(F.lit(P.HEADER))
    return repeated.select("_raw", "_source_file", kind.alias(P.RECORD_KIND))


def csv_records(spark: SparkSession, files: Sequence[sources.SourceFile], encoding: str, delimiter: str,
                header: bool, multiline: bool = True) -> DataFrame:
    """CSV files' records with their kinds: files with a quoted newline stitched in order, the rest by line."""
    files = [f.resolve() if isinstance(f, Path) else f for f in files]
    texts = {f: sources.header_line(f, encoding) for f in files} if header else {}
    plain = _plain_files(files, texts, encoding, multiline)
    rest = [f for f in files if f not in plain]
    scans = scan_lines(spark, rest, encoding, delimiter, texts, multiline) if rest and (header or multiline) else {}
    # Every file with a header is in ``scans`` (its first line equals it): its header by Spark's URI.
    headers = {scans[f].uri: texts[f] for f in rest if header and f in scans}
    stitched = [f for f in rest if f in scans and scans[f].opens_quote]
    by_line = [f for f in rest if f not in stitched]
    parts = []
    if plain:
        # The one line equal to the header in each of these files is its first (plain_lines).
        lines = sources.read_lines(spark, plain, encoding)
        if header:
            lines = lines.where(~F.col(P.LINE).isin(sorted({texts[f].lstrip(P.BOM) for f in plain})))
        parts.append(_as_records(lines))
    if by_line:
        lines = sources.read_lines(spark, by_line, encoding)
        if header:
            lines = lines.where(~_is_header(F.col(P.LINE), list(texts.values()), headers))
            parts.append(_repeated_headers(spark, headers, [scans[f] for f in by_line if f in scans]))
        parts.append(_as_records(lines))
    if stitched:
        records = P.stitch_records(sources.read_lines(spark, stitched, encoding, ordered=True), delimiter, header)
        kind = P.record_kind(F.col("_raw"), _header_of(headers) if header else None)
        parts.append(records.select("_raw", "_source_file", kind.alias(P.RECORD_KIND)))
    return reduce(DataFrame.unionByName, parts)


# Sources up to this size are checked on the driver from their bytes (``sources.plain_lines``):
# far cheaper than a Spark job for the usual file without quotes or repeated headers. Larger
# ones are scanned by Spark, in parallel.
LOCAL_CHECK_BYTES = 256 << 20


def _plain_files(files: Sequence[sources.SourceFile], texts: dict, encoding: str,
                 quotes: bool) -> list[sources.SourceFile]:
    """The files whose every line but the header is a record, as far as a driver-side byte count tells.

    Only for a small local source whose files share one header text: the lines equal to it can
    then be set aside by that text alone. Objects on a store are scanned by Spark instead (their
    bytes would cross the network to the driver).
    """
    if not all(isinstance(f, Path) for f in files):
        return []
    if sum(sources.file_size(f) for f in files) > LOCAL_CHECK_BYTES or len({t.lstrip(P.BOM) for t in texts.values()}) > 1:
        return []
    return [f for f in files if sources.plain_lines(f, texts[f].lstrip(P.BOM) if texts else None, encoding, quotes)]
