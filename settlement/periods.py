"""Settlement periods: a month, an ISO week or a day, with boundaries in Europe/Paris.

A period is named by its label (``2026-11``, ``2026-W48``, ``2026-11-15``); the label tells the
frequency. Boundaries are stored and compared in UTC; a period's end is exclusive.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from audit.chain import append
from ledger.errors import NotFound
from settlement.errors import InvalidPeriod

PARIS = ZoneInfo("Europe/Paris")
FREQUENCIES = ("monthly", "weekly", "daily")

_MONTH = re.compile(r"^(\d{4})-(\d{2})$")
_WEEK = re.compile(r"^(\d{4})-W(\d{2})$")
_DAY = re.compile(r"^(\d{4})-(\d{2})-(\d{2})$")


@dataclass(frozen=True, slots=True)
class Period:
    frequency: str
    first_day: date  # in Paris
    end_day: date    # the day after the last one, in Paris

    @property
    def label(self) -> str:
        if self.frequency == "monthly":
            return f"{self.first_day:%Y-%m}"
        if self.frequency == "weekly":
            year, week, _ = self.first_day.isocalendar()
            return f"{year}-W{week:02d}"
        return self.first_day.isoformat()

    @property
    def starts_at(self) -> datetime:
        return datetime.combine(self.first_day, time(), PARIS)

    @property
    def ends_at(self) -> datetime:
        return datetime.combine(self.end_day, time(), PARIS)

    def next(self) -> Period:
        return period_of(self.frequency, self.ends_at)


def _month(year: int, month: int) -> Period:
    first = date(year, month, 1)
    end = date(year + month // 12, month % 12 + 1, 1)
    return Period("monthly", first, end)


def parse_period(label: str) -> Period:
    try:
        if match := _MONTH.match(label):
            return _month(int(match[1]), int(match[2]))
        if match := _WEEK.match(label):
            first = date.fromisocalendar(int(match[1]), int(match[2]), 1)
            return Period("weekly", first, first + timedelta(days=7))
        if match := _DAY.match(label):
            first = date(int(match[1]), int(match[2]), int(match[3]))
            return Period("daily", first, first + timedelta(days=1))
    except ValueError:
        pass
    raise InvalidPeriod(period=label)


def period_of(frequency: str, moment: datetime) -> Period:
    """The period of ``frequency`` that holds ``moment`` (an aware datetime)."""
    if moment.tzinfo is None:
        raise InvalidPeriod("a moment must carry its time zone", message_fr="Un instant doit porter son fuseau horaire.",
                            moment=str(moment))
    day = moment.astimezone(PARIS).date()
    if frequency == "monthly":
        return _month(day.year, day.month)
    if frequency == "weekly":
        first = day - timedelta(days=day.weekday())
        return Period("weekly", first, first + timedelta(days=7))
    if frequency == "daily":
        return Period("daily", day, day + timedelta(days=1))
    raise InvalidPeriod("frequency is monthly, weekly or daily",
                        message_fr="La fréquence est monthly, weekly ou daily.", frequency=frequency)


async def set_frequency(conn: AsyncConnection, *, programme_id: int, frequency: str, actor: str) -> None:
    """How often a programme's takings are settled. Takings not yet in a batch go to the next
    batch of the new frequency; those already settled stay where they are."""
    if frequency not in FREQUENCIES:
        raise InvalidPeriod("frequency is monthly, weekly or daily",
                            message_fr="La fréquence est monthly, weekly ou daily.", frequency=frequency)
    previous = await conn.scalar(
        text("SELECT settlement_frequency FROM programmes WHERE id = :id FOR UPDATE"), {"id": programme_id})
    if previous is None:
        raise NotFound("no programme has this id", message_fr="Aucun programme ne porte ce numéro.",
                       programme_id=programme_id)
    await conn.execute(text("UPDATE programmes SET settlement_frequency = :f WHERE id = :id"),
                       {"f": frequency, "id": programme_id})
    await append(conn, event_type="settlement.frequency_changed", actor=actor, payload={
        "programme_id": programme_id, "previous": previous, "frequency": frequency})
