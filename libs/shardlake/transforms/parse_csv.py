"""CSV records to declared, typed columns at the speed of Spark's own CSV parser, with the strict rules kept.

``parse.split_fields`` + ``parse.cast_columns`` parse every record to strings and then cast each
value: exact, but about twice the cost of Spark's CSV reader with a declared schema. Almost every
record of a real source is well formed, so ``parse_typed`` parses each record once with the
declared types (``from_csv`` in PERMISSIVE mode, the reader's own parser and converters) and
sends only the records that this parse cannot vouch for through the strict path:

- the parser filled its corrupt-record field: a field count that differs, or a value that does
  not convert to its type (``12.5`` for an int, ``far`` for a double, a null text other than
  the one the parser was told, a quoted empty value);
- the record ends inside an open quote (the parser would read it to the end without complaint);
- its bytes are not valid UTF-8.

For those, values and errors are the strict path's, so a rejected record gets exactly the errors
it got before; for the others, the typed parse and the strict path agree: both trim unquoted
spaces, turn the same texts into nulls and accept the same numbers (Java's number parsing,
behind both Spark's CSV converters and its string casts).
"""
from __future__ import annotations

from collections.abc import Sequence

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from shardlake.transforms import parse as P

def parse_typed(records: DataFrame, names: Sequence[str], columns: Sequence[tuple[str, str]],
                delimiter: str = ",", null_values: Sequence[str] = ()) -> DataFrame:
    """CSV records (``_raw``, ``_source_file``, ``_record_kind``) to the declared columns and ``_parse_errors``.

    The same result as ``cast_columns(split_fields(...), trim=False)``; ``names`` are the
    records' own fields in file order, ``columns`` the declared (name, type) pairs.
    """
    types = dict(columns)
    nulls = P.null_texts(null_values)
    ddl = ", ".join(f"`{n}` {P.spark_type(types.get(n, 'string')).simpleString()}" for n in [*names, P.CORRUPT])
    typed = F.from_csv(F.col("_raw"), ddl, P.csv_options(delimiter, next((v for v in nulls if v), "")))
    is_record = F.col(P.RECORD_KIND) == F.lit(P.RECORD)
    # Each step in its own projection: Spark then evaluates the parser once per row and shares it
    # between the fields and the check (see parse.split_fields).
    fast = records.select(*P.RAW_COLUMNS, P.RECORD_KIND, typed.alias("_typed"))
    suspect = is_record & (F.col("_typed").getField(P.CORRUPT).isNotNull() | P.opens_quote(F.col("_raw"), delimiter)
                           | P.undecodable(F.col("_raw")))
    flagged = fast.withColumn("_suspect", suspect).withColumns({
        "_raw_text": F.col("_raw"),
        # Only suspect records reach the strict path: the others give it a null text, which it
        # turns into null fields and no errors at once.
        "_raw": F.when(F.col("_suspect"), F.col("_raw")),
    })
    carry = ["_typed", "_suspect", "_raw_text"]
    strict = P.cast_columns(P.split_fields(flagged, list(names), "csv", delimiter, keep=[n for n, _ in columns],
                                           carry=carry), columns, null_values, trim=False, carry=carry)
    suspect_row = F.col("_suspect")

    def value(name: str, kind: str):
        if name not in names:
            return F.lit(None).cast(P.spark_type(kind))
        quick = F.col("_typed").getField(name)
        if kind == "string":  # the parser knows one null text; the others (and "") mean missing too
            quick = F.when(~quick.isin(nulls), quick)
        return F.when(suspect_row, F.col(name)).otherwise(F.when(is_record, quick))

    return strict.select(
        F.col("_raw_text").alias("_raw"), "_source_file", P.RECORD_KIND,
        *[value(name, kind).alias(name) for name, kind in columns],
        F.when(suspect_row, F.col(P.PARSE_ERRORS)).otherwise(F.array().cast("array<string>")).alias(P.PARSE_ERRORS))
