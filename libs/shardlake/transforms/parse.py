"""Raw records to typed columns, keeping every record and noting why one did not parse."""
from __future__ import annotations

from collections.abc import Sequence

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

RAW_COLUMNS = ["_raw", "_source_file"]
PARSE_ERRORS = "_parse_errors"

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


def _field_count(raw: Column, delimiter: str) -> Column:
    # Quoted sections may hold the delimiter; remove them before counting separators.
    unquoted = F.regexp_replace(raw, '"(?:[^"]|"")*"', "")
    return F.length(unquoted) - F.length(F.replace(unquoted, F.lit(delimiter), F.lit(""))) + 1


def split_fields(raw: DataFrame, names: Sequence[str], fmt: str, delimiter: str) -> DataFrame:
    """Split raw records into string columns named ``names``; structural errors go to _parse_errors.

    CSV lines with a different number of fields than declared get ``malformed``; records with
    bytes that were not valid in the declared encoding get ``encoding``; JSON that is not an
    object gets ``malformed``.
    """
    string_schema = T.StructType([T.StructField(n, T.StringType()) for n in names])
    if fmt == "csv":
        ddl = ", ".join(f"`{n}` STRING" for n in names)
        parsed = F.from_csv(F.col("_raw"), ddl, {"sep": delimiter, "mode": "PERMISSIVE"})
        malformed = _field_count(F.col("_raw"), delimiter) != F.lit(len(names))
    elif fmt in ("json", "parquet"):
        parsed = F.from_json(F.col("_raw"), string_schema, {"mode": "PERMISSIVE"})
        malformed = ~F.trim(F.col("_raw")).startswith("{") | parsed.isNull()
    else:
        raise ValueError(f"unsupported format {fmt!r}")
    errors = F.array_compact(F.array(
        F.when(malformed, F.lit("malformed")),
        F.when(F.col("_raw").contains("\ufffd"), F.lit("encoding")),
    ))
    return raw.select(*RAW_COLUMNS, parsed.alias("_fields"), errors.alias(PARSE_ERRORS)).select(
        *RAW_COLUMNS, *[F.col("_fields").getField(n).alias(n) for n in names], PARSE_ERRORS
    )


def cast_columns(df: DataFrame, columns: Sequence[tuple[str, str]], null_values: Sequence[str]) -> DataFrame:
    """Cast string columns to declared types; a non-null value that does not cast adds ``type:<col>``.

    Values listed in ``null_values`` (e.g. NA) are missing, not errors. Non-finite numbers
    (NaN, Infinity) cast as Spark does and are left for the ``finite`` rule.
    """
    nulls = list(null_values)
    cleaned = {
        name: F.when(F.trim(F.col(name)).isin(nulls) | F.col(name).isNull(), F.lit(None)).otherwise(F.trim(F.col(name)))
        for name, _ in columns
    }
    typed = {name: cleaned[name].cast(spark_type(kind)) for name, kind in columns}
    failures = [F.when(cleaned[name].isNotNull() & typed[name].isNull(), F.lit(f"type:{name}")) for name, _ in columns]
    errors = F.concat(F.col(PARSE_ERRORS), F.array_compact(F.array(*failures)))
    return df.select(*RAW_COLUMNS, *[typed[name].alias(name) for name, _ in columns], errors.alias(PARSE_ERRORS))
