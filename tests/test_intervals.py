"""Data intervals and source path templates (pure Python)."""
from __future__ import annotations

import datetime as dt

import pytest

from shardlake.intervals import DataInterval, IntervalError, placeholders, render


def test_a_daily_interval_ends_the_next_day():
    assert DataInterval.daily("2024-01-31") == DataInterval(dt.date(2024, 1, 31), dt.date(2024, 2, 1))


def test_an_interval_that_ends_before_it_starts_is_refused():
    with pytest.raises(IntervalError, match="the end must not come before the start"):
        DataInterval.daily("2024-01-02", "2024-01-01")


def test_a_template_is_filled_from_the_interval_not_the_clock():
    interval = DataInterval.daily("2024-01-02", "2024-01-09")
    assert render("landing/{ds}/{year}-{month}-{day}/{ds_nodash}_{end_ds}_{end_ds_nodash}.csv", interval) == (
        "landing/2024-01-02/2024-01-02/20240102_2024-01-09_20240109.csv")


def test_a_path_without_placeholders_needs_no_interval_and_keeps_escaped_braces():
    assert render("data/{{raw}}/*.csv", None) == "data/{raw}/*.csv"


def test_a_template_without_an_interval_is_refused_and_says_what_to_pass():
    with pytest.raises(IntervalError, match=r"names its files by data interval.*--logical-date"):
        render("landing/{ds}/*.csv", None)


@pytest.mark.parametrize("template", ["landing/{date}/*.csv", "landing/{ds:%Y}/*.csv", "landing/{ds!r}/x"])
def test_an_unknown_placeholder_or_a_format_spec_is_refused(template):
    with pytest.raises(IntervalError, match="unknown placeholder"):
        placeholders(template)
