"""Raw records to typed columns, keeping every record and noting why one did not parse.

Parsing is split in two pure steps so that nothing is lost on the way:
``split_fields`` turns the raw text into string fields (structural errors: ``malformed``,
``encoding``), ``cast_columns`` turns strings into the declared types (``type:<column>`` when a
present value does not convert). The raw text stays next to the parsed values, so a rejected row
can be quarantined exactly as it arrived.
"""
from __future__ import annotations

from collections.abc import Sequence

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

RAW_COLUMNS = ["_raw", "_source_file"]
PARSE_ERRORS = "_parse_errors"
MALFORMED = "malformed"
_CORRUPT = "_corrupt_record_"
ENCODING = "encoding"

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


def _undecodable(raw: Column) -> Column:
    """True for text holding bytes that are not valid UTF-8, or an already-substituted U+FFFD.

    Spark's text source keeps a line's bytes as they are; re-encoding replaces invalid sequences,
    so the bytes differ exactly when the line was not valid UTF-8.
    """
    return (raw.cast("binary") != F.encode(raw, "UTF-8")) | raw.contains("\ufffd")


def split_fields(raw: DataFrame, names: Sequence[str], fmt: str, delimiter: str = ",",
                 keep: Sequence[str] | None = None) -> DataFrame:
    """Split raw records into string columns; structural errors go to ``_parse_errors``.

    ``names`` are the fields of the records as they arrive (a CSV file's header order); ``keep``
    (default: ``names``) are the columns returned, in that order; a kept name the records do
    not have comes back null, so files whose header differs by name can still be read.
    CSV lines whose field count differs from ``names`` are ``malformed``; JSON that is not an
    object is ``malformed``; text with bytes that are not valid UTF-8 (or U+FFFD) is ``encoding``.
    Quoting follows RFC 4180 (a quote inside a quoted field is doubled); spaces around an
    unquoted CSV value are not part of it.
    """
    keep = list(names if keep is None else keep)
    if fmt == "csv":
        # The CSV parser itself marks a line whose field count differs, or whose quote is not
        # closed, by filling the corrupt-record field: no second scan of the line is needed.
        ddl = ", ".join(f"`{n}` STRING" for n in [*names, _CORRUPT])
        parsed = F.from_csv(F.col("_raw"), ddl, {
            "sep": delimiter, "mode": "PERMISSIVE", "escape": '"', "columnNameOfCorruptRecord": _CORRUPT,
            "ignoreLeadingWhiteSpace": "true", "ignoreTrailingWhiteSpace": "true",
        })
        malformed = parsed.getField(_CORRUPT).isNotNull()
    elif fmt in ("json", "parquet"):
        schema = T.StructType([T.StructField(n, T.StringType()) for n in names])
        parsed = F.from_json(F.col("_raw"), schema, {"mode": "PERMISSIVE"})
        malformed = ~F.ltrim(F.col("_raw")).startswith("{") | parsed.isNull()
    else:
        raise ValueError(f"unsupported format {fmt!r}")
    errors = F.array_compact(F.array(
        F.when(malformed, F.lit(MALFORMED)),
        F.when(_undecodable(F.col("_raw")), F.lit(ENCODING)),
    ))
    known = set(names)
    fields = [F.col("_fields").getField(n).alias(n) if n in known else F.lit(None).cast("string").alias(n)
              for n in keep]
    return (raw.select(*RAW_COLUMNS, parsed.alias("_fields"), errors.alias(PARSE_ERRORS))
            .select(*RAW_COLUMNS, *fields, PARSE_ERRORS))


def cast_columns(df: DataFrame, columns: Sequence[tuple[str, str]], null_values: Sequence[str],
                 trim: bool = True) -> DataFrame:
    """Cast string columns to declared types; a present value that does not convert adds ``type:<col>``.

    Values listed in ``null_values`` (e.g. NA) and empty strings are missing, not errors.
    Casting is strict (``try_cast``): '12.5' is not an int and is flagged, where a plain cast
    would silently truncate it to 12. Non-finite numbers (NaN, Infinity) convert and are left
    to the ``finite`` rule. Surrounding spaces are ignored (``trim=False`` when the parser
    already dropped them, as the CSV parser does: trimming is a visible share of the cost).
    """
    nulls = list(dict.fromkeys(["", *[v for v in null_values if v is not None]]))

    def present(name: str) -> Column:
        value = F.trim(F.col(name)) if trim else F.col(name)
        return F.when(value.isin(nulls), F.lit(None).cast("string")).otherwise(value)

    cast = [name for name, kind in columns if kind != "string"]
    cleaned = df.select(*RAW_COLUMNS, PARSE_ERRORS, *[present(name).alias(name) for name, _ in columns])
    # Each value is cast once, in its own projection, and the failure check reads the result:
    # written inside the check, the cast would run twice (it sits under a short-circuit AND,
    # which Spark's common-subexpression elimination does not share). try_cast has no Column
    # method in PySpark 3.5; the SQL form is the same expression.
    typed = cleaned.select(
        *RAW_COLUMNS, PARSE_ERRORS, *[F.col(name).alias(f"_text_{name}") for name in cast],
        *[F.col(name) if kind == "string"
          else F.expr(f"try_cast(`{name}` AS {spark_type(kind).simpleString()})").alias(name)
          for name, kind in columns])
    failures = [F.when(F.col(f"_text_{name}").isNotNull() & F.col(name).isNull(), F.lit(f"type:{name}"))
                for name in cast]
    errors = F.concat(F.col(PARSE_ERRORS), F.array_compact(F.array(*failures))) if failures else F.col(PARSE_ERRORS)
    return typed.select(*RAW_COLUMNS, *[name for name, _ in columns], errors.alias(PARSE_ERRORS))
