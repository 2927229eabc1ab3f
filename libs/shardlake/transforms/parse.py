"""Raw records to typed columns, keeping every record and noting why one did not parse.

Parsing is split in pure steps so that nothing is lost on the way: ``stitch_records`` joins the
physical lines of a CSV file into records (a quoted field may hold newlines, RFC 4180),
``record_kind`` tells records from blank and repeated header lines, ``split_fields`` turns the
raw text into string fields (structural errors: ``malformed``, ``encoding``) and
``cast_columns`` turns strings into the declared types (``type:<column>`` when a present value
does not convert). The raw text stays next to the parsed values, so a rejected row can be
quarantined exactly as it arrived.

The CSV quote grammar used to find record boundaries is the one Spark's CSV parser applies to a
record (quote ``"``, doubled inside a quoted field, spaces before an opening quote ignored):

- a quote opens a quoted field only at the start of a field; elsewhere it is an ordinary character;
- inside a quoted field ``""`` is a quote and a lone ``"`` closes the field; what follows the
  closing quote up to the next delimiter stays in the field;
- a newline inside a quoted field is part of the record;
- a quote that is still open at the end of the file never closes: it cannot hold a newline, so
  the line that opened it is one malformed record and the lines after it are read as records
  again (from a field boundary, outside quotes).
"""
from __future__ import annotations

import operator
from collections.abc import Sequence
from functools import reduce

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T

RAW_COLUMNS = ["_raw", "_source_file"]
RECORD_KIND = "_record_kind"
RECORD, BLANK, HEADER = "record", "blank", "header"
PARSE_ERRORS = "_parse_errors"
MALFORMED = "malformed"
ENCODING = "encoding"
CORRUPT = "_corrupt_record_"  # the CSV parser's corrupt-record field
BOM = "\ufeff"
# Columns of the physical lines ``stitch_records`` reads: the text and its place in the file
# (the split's first byte, then the line's order in the split).
LINE, LINE_BLOCK, LINE_NO = "_line", "_line_block", "_line_no"

_SPARK_TYPE = {
    "string": T.StringType(),
    "int": T.IntegerType(),
    "bigint": T.LongType(),
    "double": T.DoubleType(),
    "float": T.FloatType(),
    "boolean": T.BooleanType(),
    "date": T.DateType(),
    "timestamp": T.TimestampType(),
}


def spark_type(name: str) -> T.DataType:
    """The Spark type of a declared type name."""
    return _SPARK_TYPE[name]


def _char(ch: str) -> str:
    """A Java regex escape of one character, valid inside and outside a character class."""
    return f"\\x{{{ord(ch):x}}}"


def _quote_grammar(delimiter: str) -> tuple[str, str]:
    """Java regexes (opens, stays) of the CSV quote grammar for ``delimiter`` (see the module doc).

    ``opens``: text read from a field boundary outside quotes ends inside an open quoted field.
    ``stays``: text read from inside a quoted field ends inside one (closing none, or closing
    and opening another). Quantifiers are possessive: the grammar is deterministic, so nothing
    needs to backtrack, and a long line costs one pass.
    """
    delim = "".join(_char(c) for c in delimiter)
    if len(delimiter) == 1:
        not_delim, space = f"[^{delim}\\n]", f"[\\x00-\\x20&&[^\\n{delim}]]"
    else:
        not_delim, space = f"(?:(?!{delim})[^\\n])", "[\\x00-\\x20&&[^\\n]]"
    body = '(?:[^"]|"")*+'  # inside a quoted field: anything, a quote only doubled
    field = f'(?:{space}*+"{body}"{not_delim}*+|(?!{space}*+"){not_delim}*+)'
    opened = f'{space}*+"{body}'
    opens = f"\\A(?:{field}{delim})*+{opened}\\z"
    stays = f'\\A{body}(?:"{not_delim}*+(?:{delim}{field})*+{delim}{opened})?\\z'
    return opens, stays


def opens_quote(text: Column, delimiter: str = ",") -> Column:
    """True where ``text``, read from the start of a record, ends inside a quoted field that is still open."""
    return text.contains('"') & text.rlike(_quote_grammar(delimiter)[0])


def stays_quoted(text: Column, delimiter: str = ",") -> Column:
    """True where ``text``, read from inside a quoted field, ends inside a quoted field."""
    return ~text.contains('"') | text.rlike(_quote_grammar(delimiter)[1])


def stitch_records(lines: DataFrame, delimiter: str = ",", header: bool = False) -> DataFrame:
    """Physical lines of CSV files to records (``_raw``, ``_source_file``): one row per record.

    ``lines`` holds ``_source_file``, ``_line`` (a line without its LF; a CR of a CRLF ending
    is still there) and its place, ``_line_block`` then ``_line_no``. Lines of one record are
    joined with LF, so a record's text is the file's text (CRLF inside a quoted field stays
    CRLF); the CR of the record's own line ending is dropped. With ``header`` the first line of
    each file is the header, not a record (it counts as a line without quotes).

    Each line maps the state at its start (outside or inside a quoted field) to the state at its
    end by one of four maps: keep, always outside, always inside, flip. The state before a line
    is therefore the value of the last "always" line before it, flipped once per "flip" line
    since: running window aggregates over the file, no sequential loop. A line after the file's
    last line that can close a quote starts outside whatever came before (a quote open there
    never closes; see the module doc). All lines of a file are ordered in one window partition:
    read only files that have quoted newlines this way.
    """
    order = Window.partitionBy("_source_file").orderBy(LINE_BLOCK, LINE_NO)
    before = order.rowsBetween(Window.unboundedPreceding, -1)
    upto = order.rowsBetween(Window.unboundedPreceding, Window.currentRow)
    rest = order.rowsBetween(Window.currentRow, Window.unboundedFollowing)
    first = (F.row_number().over(order) == 1) if header else F.lit(False)
    line = F.col(LINE)
    mapped = lines.withColumn("_first", first).withColumns({
        "_opens": ~F.col("_first") & opens_quote(line, delimiter),
        "_stays": F.col("_first") | stays_quoted(line, delimiter),
    })
    opens, stays = F.col("_opens"), F.col("_stays")
    flip = opens & ~stays
    counted = mapped.withColumns({
        "_flips_before": F.coalesce(F.sum(flip.cast("int")).over(before), F.lit(0)),
        # Lines that can leave a quoted field, from here to the end of the file.
        "_closers_left": F.sum((~stays).cast("int")).over(rest),
    })
    fixed = F.when(opens == stays, F.struct(F.col("_flips_before").alias("flips"), opens.alias("inside")))
    last_fixed = F.last(fixed, ignorenulls=True).over(before)
    flipped = ((F.col("_flips_before") - F.coalesce(last_fixed.getField("flips"), F.lit(0))) % 2) == 1
    inside = F.coalesce(last_fixed.getField("inside"), F.lit(False)) != flipped
    starts = (F.col("_closers_left") == 0) | ~inside
    numbered = (counted.withColumn("_starts", starts)
                .withColumn("_record_no", F.sum(F.col("_starts").cast("int")).over(upto))
                .where(~F.col("_first")))
    grouped = numbered.groupBy("_source_file", "_record_no").agg(
        F.array_sort(F.collect_list(F.struct(LINE_BLOCK, LINE_NO, LINE))).alias("_lines"))
    text = F.concat_ws("\n", F.transform(F.col("_lines"), lambda x: x.getField(LINE)))
    return grouped.select(strip_cr(text).alias("_raw"), "_source_file")


def strip_cr(text: Column) -> Column:
    """``text`` without one trailing CR (what is left of a CRLF line ending once split at LF)."""
    return F.when(text.endswith("\r"), text.substr(F.lit(1), F.length(text) - 1)).otherwise(text)


def record_kind(raw: Column, header: Column | None = None) -> Column:
    """``blank`` for a line of spaces only, ``header`` for a line equal to ``header`` (text without a
    byte-order mark; the line may have one), else ``record``.

    Only single-line records can be blank or a header: a record that spans lines holds a quote.
    """
    # Length and first byte settle almost every line without trimming (which copies the text).
    kind = F.when((F.octet_length(raw) == 0) | (raw.startswith(" ") & (F.trim(raw) == "")), F.lit(BLANK))
    if header is not None:
        kind = kind.when((raw == header) | (raw == F.concat(F.lit(BOM), header)), F.lit(HEADER))
    return kind.otherwise(F.lit(RECORD))


def csv_options(delimiter: str, null_value: str | None = None) -> dict[str, str]:
    """Options of Spark's CSV parser for one record (``from_csv``): RFC 4180 quoting, PERMISSIVE with
    the ``CORRUPT`` field, spaces around unquoted values dropped; ``null_value``: its one null text."""
    options = {"sep": delimiter, "mode": "PERMISSIVE", "escape": '"', "columnNameOfCorruptRecord": CORRUPT,
               "ignoreLeadingWhiteSpace": "true", "ignoreTrailingWhiteSpace": "true"}
    return options if null_value is None else {**options, "nullValue": null_value}


def undecodable(raw: Column) -> Column:
    """True for text holding bytes that are not valid UTF-8, or an already-substituted U+FFFD.

    Spark's text source keeps a line's bytes as they are; re-encoding replaces invalid sequences,
    so the bytes differ exactly when the line was not valid UTF-8.
    """
    return (raw.cast("binary") != F.encode(raw, "UTF-8")) | raw.contains("\ufffd")


def error_list(checks: dict[str, Column], before: Column | None = None) -> Column:
    """``before`` (default: no errors) followed by the names of the checks that hold, in order.

    Most rows break nothing: building (and compacting) an array of nulls for each of them cost
    more than the parse itself, so a row where no check holds gets ``before`` as it is.
    """
    none = F.array().cast("array<string>") if before is None else before
    if not checks:
        return none
    broken = F.array_compact(F.array(*[F.when(check, F.lit(name)) for name, check in checks.items()]))
    return F.when(reduce(operator.or_, checks.values()),
                  broken if before is None else F.concat(before, broken)).otherwise(none)


def _carried(df: DataFrame) -> list[str]:
    """The columns every step passes through: raw text, source file and, where present, record kind."""
    return [*RAW_COLUMNS, *([RECORD_KIND] if RECORD_KIND in df.columns else [])]


def split_fields(raw: DataFrame, names: Sequence[str], fmt: str, delimiter: str = ",",
                 keep: Sequence[str] | None = None, carry: Sequence[str] = ()) -> DataFrame:
    """Split raw records into string columns; structural errors go to ``_parse_errors``.

    ``names`` are the fields of the records as they arrive (a CSV file's header order); ``keep``
    (default: ``names``) are the columns returned, in that order; a kept name the records do
    not have comes back null, so files whose header differs by name can still be read.
    CSV records whose field count differs from ``names``, or whose quote never closes, are
    ``malformed``; JSON that is not an object is ``malformed``; text with bytes that are not
    valid UTF-8 (or U+FFFD) is ``encoding``. Quoting follows RFC 4180 (a quote inside a quoted
    field is doubled; a quoted field may hold the delimiter and newlines); spaces around an
    unquoted CSV value are not part of it. When ``raw`` has ``_record_kind``, it is kept, and
    rows that are not records (blank or header lines) get null fields and no errors. ``carry``
    names further columns passed through as they are.
    """
    keep = list(names if keep is None else keep)
    if fmt == "csv":
        # The CSV parser itself marks a record whose field count differs by filling the
        # corrupt-record field: no second scan of the record is needed for that. It reads an
        # unclosed quote to the end of the text without complaint, hence the quote check.
        ddl = ", ".join(f"`{n}` STRING" for n in [*names, CORRUPT])
        parsed = F.from_csv(F.col("_raw"), ddl, csv_options(delimiter))
        malformed = parsed.getField(CORRUPT).isNotNull() | opens_quote(F.col("_raw"), delimiter)
    elif fmt in ("json", "parquet"):
        schema = T.StructType([T.StructField(n, T.StringType()) for n in names])
        parsed = F.from_json(F.col("_raw"), schema, {"mode": "PERMISSIVE"})
        malformed = ~F.ltrim(F.col("_raw")).startswith("{") | parsed.isNull()
    else:
        raise ValueError(f"unsupported format {fmt!r}")
    carried = [*_carried(raw), *carry]
    # The parse and the checks run once per row, unconditionally, in their own projection: put
    # under a CASE (as masking by kind, or the error list, would), Spark's common-subexpression
    # elimination no longer shares the parser between the fields and the checks, and each row
    # is parsed once more per reference.
    checked = raw.select(*carried, parsed.alias("_fields"), malformed.alias("_malformed"),
                         undecodable(F.col("_raw")).alias("_undecodable"))
    errors = error_list({MALFORMED: F.col("_malformed"), ENCODING: F.col("_undecodable")})
    known = set(names)
    fields = {n: F.col("_fields").getField(n) if n in known else F.lit(None).cast("string") for n in keep}
    if RECORD_KIND in carried:
        # Blank and header lines are rows too, with no values and nothing wrong.
        is_record = F.col(RECORD_KIND) == F.lit(RECORD)
        fields = {n: F.when(is_record, value) for n, value in fields.items()}
        errors = F.when(is_record, errors).otherwise(F.array().cast("array<string>"))
    return checked.select(*carried, *[value.alias(n) for n, value in fields.items()], errors.alias(PARSE_ERRORS))


def null_texts(null_values: Sequence[str]) -> list[str]:
    """The texts that mean "missing": the declared null values and the empty string."""
    return list(dict.fromkeys(["", *[v for v in null_values if v is not None]]))


def cast_columns(df: DataFrame, columns: Sequence[tuple[str, str]], null_values: Sequence[str],
                 trim: bool = True, carry: Sequence[str] = ()) -> DataFrame:
    """Cast string columns to declared types; a present value that does not convert adds ``type:<col>``.

    Values listed in ``null_values`` (e.g. NA) and empty strings are missing, not errors.
    Casting is strict (``try_cast``): '12.5' is not an int and is flagged, where a plain cast
    would silently truncate it to 12. Non-finite numbers (NaN, Infinity) convert and are left
    to the ``finite`` rule. Surrounding spaces are ignored (``trim=False`` when the parser
    already dropped them, as the CSV parser does: trimming is a visible share of the cost).
    ``_record_kind``, where present, and the ``carry`` columns are kept.
    """
    nulls = null_texts(null_values)
    carried = [*_carried(df), *carry]

    def present(name: str) -> Column:
        value = F.trim(F.col(name)) if trim else F.col(name)
        return F.when(value.isin(nulls), F.lit(None).cast("string")).otherwise(value)

    cast = [name for name, kind in columns if kind != "string"]
    cleaned = df.select(*carried, PARSE_ERRORS, *[present(name).alias(name) for name, _ in columns])
    # Each value is cast once, in its own projection, and the failure check reads the result:
    # written inside the check, the cast would run twice (it sits under a short-circuit AND,
    # which Spark's common-subexpression elimination does not share). try_cast has no Column
    # method in PySpark 3.5; the SQL form is the same expression.
    typed = cleaned.select(
        *carried, PARSE_ERRORS, *[F.col(name).alias(f"_text_{name}") for name in cast],
        *[F.col(name) if kind == "string"
          else F.expr(f"try_cast(`{name}` AS {spark_type(kind).simpleString()})").alias(name)
          for name, kind in columns])
    errors = error_list({f"type:{name}": F.col(f"_text_{name}").isNotNull() & F.col(name).isNull()
                         for name in cast}, before=F.col(PARSE_ERRORS))
    return typed.select(*carried, *[name for name, _ in columns], errors.alias(PARSE_ERRORS))
