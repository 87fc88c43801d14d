"""Settlement periods: months, ISO weeks and days, cut at midnight in Paris."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from settlement.errors import InvalidPeriod
from settlement.periods import parse_period, period_of


def test_a_month_runs_from_paris_midnight_to_paris_midnight():
    november = parse_period("2026-11")
    assert november.starts_at.astimezone(timezone.utc) == datetime(2026, 10, 31, 23, 0, tzinfo=timezone.utc)
    assert november.ends_at.astimezone(timezone.utc) == datetime(2026, 11, 30, 23, 0, tzinfo=timezone.utc)
    assert parse_period("2026-12").ends_at.astimezone(timezone.utc) == datetime(2026, 12, 31, 23, 0, tzinfo=timezone.utc)


def test_a_late_evening_redemption_in_utc_belongs_to_the_next_paris_day_and_month():
    moment = datetime(2026, 11, 30, 23, 30, tzinfo=timezone.utc)  # 00:30 on 1 December in Paris
    assert period_of("monthly", moment).label == "2026-12"
    assert period_of("daily", moment).label == "2026-12-01"
    assert period_of("weekly", moment).label == "2026-W49"


def test_summer_time_changes_the_utc_offset_of_the_boundary():
    march = parse_period("2026-03")
    assert march.starts_at.utcoffset().total_seconds() == 3600
    assert march.ends_at.utcoffset().total_seconds() == 7200


def test_week_and_day_labels_round_trip():
    for label in ("2026-W01", "2026-W53", "2026-11-15", "2026-02"):  # 2026 has 53 ISO weeks
        assert parse_period(label).label == label
    week = parse_period("2026-W48")
    assert (week.first_day.isoformat(), week.end_day.isoformat()) == ("2026-11-23", "2026-11-30")
    assert week.next().label == "2026-W49"


@pytest.mark.parametrize("label", ["2026-13", "2026-W60", "2026-02-30", "26-11", "november", ""])
def test_nonsense_periods_are_refused(label):
    with pytest.raises(InvalidPeriod):
        parse_period(label)
