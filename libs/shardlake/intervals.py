"""Data intervals: the span of data a scheduled run is about, and source paths named by it.

Airflow gives each run a data interval [start, end); a daily run of logical date 2024-01-02 covers
2024-01-02T00:00 to 2024-01-03T00:00. A dataset names its landing data by interval with a path
template, e.g. ``landing/{ds}/*.csv``; the run renders it from the interval it was given, never
from the wall clock, so re-running a past interval reads that interval's files again.
"""
from __future__ import annotations

import datetime as dt
import string
from dataclasses import dataclass

# What a source path may name, as Airflow's template variables of the same names.
PLACEHOLDERS = ("ds", "ds_nodash", "end_ds", "end_ds_nodash", "year", "month", "day")


class IntervalError(ValueError):
    """A path template that names an unknown placeholder, or needs an interval that was not given."""


def placeholders(template: str) -> list[str]:
    """The ``{name}`` fields of ``template``, in order; unknown names and format specs are refused."""
    try:
        fields = [(name, spec, conv) for _, name, spec, conv in string.Formatter().parse(template) if name is not None]
    except ValueError as err:
        raise IntervalError(f"{template!r}: not a valid path template ({err}); a literal brace is written {{{{ or }}}}")
    for name, spec, conv in fields:
        if name not in PLACEHOLDERS or spec or conv:
            raise IntervalError(f"{template!r}: unknown placeholder {{{name}}}; expected one of "
                                + ", ".join(f"{{{p}}}" for p in PLACEHOLDERS))
    return [name for name, _, _ in fields]


@dataclass(frozen=True)
class DataInterval:
    """[start, end) as dates (the start is Airflow's ``ds``; equal dates: an interval within that day)."""

    start: dt.date
    end: dt.date

    @classmethod
    def daily(cls, logical_date: str, end: str | None = None) -> "DataInterval":
        """The interval of a run: ``logical_date`` (YYYY-MM-DD) to ``end``, by default the next day."""
        start = dt.date.fromisoformat(logical_date)
        stop = dt.date.fromisoformat(end) if end else start + dt.timedelta(days=1)
        if stop < start:  # equal: an interval shorter than a day (an hourly schedule)
            raise IntervalError(f"data interval {start} to {stop}: the end must not come before the start")
        return cls(start, stop)

    def values(self) -> dict[str, str]:
        return {"ds": self.start.isoformat(), "ds_nodash": self.start.strftime("%Y%m%d"),
                "end_ds": self.end.isoformat(), "end_ds_nodash": self.end.strftime("%Y%m%d"),
                "year": f"{self.start.year:04d}", "month": f"{self.start.month:02d}", "day": f"{self.start.day:02d}"}


def render(template: str, interval: DataInterval | None) -> str:
    """``template`` with its placeholders filled from ``interval`` (and ``{{``/``}}`` unescaped)."""
    if placeholders(template) and interval is None:
        raise IntervalError(f"{template!r} names its files by data interval; give the run's logical date "
                            "(--logical-date YYYY-MM-DD, Airflow's {{ ds }})")
    return template.format(**(interval.values() if interval else {}))
