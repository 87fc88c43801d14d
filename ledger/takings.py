"""What a shop took: the day's totals per programme, the transaction list, the day closure.

Reads ``merchant_takings`` (redemptions, refunds, wallet payments) of one merchant only;
days are Paris calendar days. A closure (Z report) is written once per day and never
changed; takings that arrive on a day after its closure are shown beside it, never hidden.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, timezone
from typing import Any
from zoneinfo import ZoneInfo

import orjson
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from audit.chain import append
from ledger.errors import DomainError, InvalidInput, NotFound

PARIS = ZoneInfo("Europe/Paris")
PAGE_SIZE_MAX = 500
EXPORT_ROWS_MAX = 100_000
PERIOD_DAYS_MAX = 366


class DayAlreadyClosed(DomainError):
    code = "day_already_closed"
    message = "This day was already closed."
    message_fr = "Cette journée a déjà été clôturée."


class DayNotStarted(DomainError):
    code = "day_not_started"
    message = "A day can be closed once it has started, not in advance."
    message_fr = "Une journée ne peut être clôturée qu'une fois commencée."


def paris_day(moment: datetime) -> date:
    return moment.astimezone(PARIS).date()


def day_bounds(first: date, last: date | None = None) -> tuple[datetime, datetime]:
    """The UTC instants where the Paris days ``first`` to ``last`` (inclusive) start and end."""
    start = datetime.combine(first, time(), PARIS)
    end = datetime.combine((last or first) + timedelta(days=1), time(), PARIS)
    return start.astimezone(timezone.utc), end.astimezone(timezone.utc)


@dataclass(frozen=True, slots=True)
class ProgrammeTotal:
    programme_id: int
    programme_name: str
    unit: str
    redeemed_count: int
    redeemed_cents: int
    refunded_count: int
    refunded_cents: int  # negative
    payment_count: int
    payment_cents: int
    net_cents: int


@dataclass(frozen=True, slots=True)
class Taking:
    id: int
    kind: str
    programme_id: int
    programme_name: str
    unit: str
    amount_cents: int
    voucher_id: int | None
    code_hint: str | None
    wallet_id: int | None
    refund_of: int | None
    refunded_by: int | None
    user_id: int | None
    transfer_id: int
    effective_at: datetime


@dataclass(frozen=True, slots=True)
class Closure:
    id: int
    merchant_id: int
    business_day: date
    totals: list[dict[str, Any]]
    count: int
    net_cents: int
    last_taking_id: int | None
    closed_by: int | None
    audit_event_id: int
    created_at: datetime
    late: list[dict[str, Any]]  # takings of that day after its closure, per programme


_TOTALS_SQL = text(
    """
    SELECT t.programme_id, p.name, p.unit,
           count(*) FILTER (WHERE t.kind = 'redeem'), coalesce(sum(t.amount_cents) FILTER (WHERE t.kind = 'redeem'), 0),
           count(*) FILTER (WHERE t.kind = 'refund'), coalesce(sum(t.amount_cents) FILTER (WHERE t.kind = 'refund'), 0),
           count(*) FILTER (WHERE t.kind = 'payment'), coalesce(sum(t.amount_cents) FILTER (WHERE t.kind = 'payment'), 0),
           sum(t.amount_cents)
    FROM merchant_takings t JOIN programmes p ON p.id = t.programme_id
    WHERE t.merchant_id = :merchant_id AND t.effective_at >= :start AND t.effective_at < :end
      AND t.id > :after_id AND t.id <= :until_id
    GROUP BY t.programme_id, p.name, p.unit ORDER BY t.programme_id
    """
)
_ID_MAX = 2**63 - 1


async def day_totals(conn: AsyncConnection, merchant_id: int, day: date, *, after_id: int = 0,
                     until_id: int = _ID_MAX) -> list[ProgrammeTotal]:
    start, end = day_bounds(day)
    rows = await conn.execute(_TOTALS_SQL, {"merchant_id": merchant_id, "start": start, "end": end,
                                            "after_id": after_id, "until_id": until_id})
    # sum() of bigint is numeric in PostgreSQL: back to int.
    return [ProgrammeTotal(row[0], row[1], row[2], *(int(v) for v in row[3:])) for row in rows]


def _check_period(first: date, last: date) -> None:
    if last < first or (last - first).days >= PERIOD_DAYS_MAX:
        raise InvalidInput(f"a period runs forward and covers at most {PERIOD_DAYS_MAX} days",
                           message_fr=f"une période va vers l'avant et couvre au plus {PERIOD_DAYS_MAX} jours")


_LIST_SQL = text(
    """
    SELECT t.id, t.kind, t.programme_id, p.name, p.unit, t.amount_cents, t.voucher_id, right(v.code, 4),
           t.wallet_id, t.refund_of, r.id, t.user_id, t.transfer_id, t.effective_at
    FROM merchant_takings t
    JOIN programmes p ON p.id = t.programme_id
    LEFT JOIN vouchers v ON v.id = t.voucher_id
    LEFT JOIN merchant_takings r ON r.refund_of = t.id
    WHERE t.merchant_id = :merchant_id AND t.effective_at >= :start AND t.effective_at < :end
      AND t.id < :before_id
    ORDER BY t.id DESC LIMIT :limit
    """
)


async def list_takings(conn: AsyncConnection, merchant_id: int, *, first: date, last: date,
                       before_id: int | None = None, limit: int = 50) -> list[Taking]:
    """The shop's transactions between two Paris days (inclusive), newest first; page on with
    ``before_id`` = the last id of the previous page."""
    _check_period(first, last)
    if not 1 <= limit <= EXPORT_ROWS_MAX:
        raise InvalidInput(f"limit is 1 to {EXPORT_ROWS_MAX}")
    start, end = day_bounds(first, last)
    rows = await conn.execute(_LIST_SQL, {"merchant_id": merchant_id, "start": start, "end": end,
                                          "before_id": before_id or _ID_MAX, "limit": limit})
    return [Taking(*row) for row in rows]


async def get_closure(conn: AsyncConnection, merchant_id: int, day: date) -> Closure:
    row = (await conn.execute(
        text(
            "SELECT id, merchant_id, business_day, totals, count, net_cents, last_taking_id, closed_by, "
            "audit_event_id, created_at FROM merchant_closures WHERE merchant_id = :merchant_id AND business_day = :day"
        ),
        {"merchant_id": merchant_id, "day": day},
    )).one_or_none()
    if row is None:
        raise NotFound("this day is not closed", message_fr="cette journée n'est pas clôturée", day=day.isoformat())
    late = await day_totals(conn, merchant_id, day, after_id=row.last_taking_id or 0)
    return Closure(*row, late=[_total_json(t) for t in late])


def _total_json(total: ProgrammeTotal) -> dict[str, Any]:
    return {name: getattr(total, name) for name in ProgrammeTotal.__slots__}


async def close_day(conn: AsyncConnection, merchant_id: int, day: date, *, user_id: int, actor: str,
                    now: datetime | None = None) -> Closure:
    """The shop's Z report for a Paris day: totals per programme up to the last taking so far."""
    now = now or datetime.now(timezone.utc)
    if day > paris_day(now):
        raise DayNotStarted(day=day.isoformat())
    # One closure per shop at a time: the merchant row lock orders concurrent closes.
    await conn.execute(text("SELECT 1 FROM merchants WHERE id = :id FOR UPDATE"), {"id": merchant_id})
    exists = await conn.scalar(
        text("SELECT 1 FROM merchant_closures WHERE merchant_id = :merchant_id AND business_day = :day"),
        {"merchant_id": merchant_id, "day": day})
    if exists:
        raise DayAlreadyClosed(day=day.isoformat())
    start, end = day_bounds(day)
    last_taking_id = await conn.scalar(
        text("SELECT max(id) FROM merchant_takings WHERE merchant_id = :merchant_id "
             "AND effective_at >= :start AND effective_at < :end"),
        {"merchant_id": merchant_id, "start": start, "end": end})
    totals = [_total_json(t) for t in await day_totals(conn, merchant_id, day, until_id=last_taking_id or 0)]
    count = sum(t["redeemed_count"] + t["refunded_count"] + t["payment_count"] for t in totals)
    net_cents = sum(t["net_cents"] for t in totals)
    audit_event_id = await append(conn, event_type="merchant.day_closed", actor=actor, payload={
        "merchant_id": merchant_id, "business_day": day.isoformat(), "totals": totals, "count": count,
        "net_cents": net_cents, "last_taking_id": last_taking_id,
    })
    await conn.execute(
        text(
            """
            INSERT INTO merchant_closures (merchant_id, business_day, totals, count, net_cents, last_taking_id,
                                           closed_by, audit_event_id)
            VALUES (:merchant_id, :day, CAST(:totals AS jsonb), :count, :net_cents, :last_taking_id, :user_id, :event)
            """
        ),
        {"merchant_id": merchant_id, "day": day, "totals": orjson.dumps(totals).decode(), "count": count, "net_cents": net_cents,
         "last_taking_id": last_taking_id, "user_id": user_id, "event": audit_event_id},
    )
    return await get_closure(conn, merchant_id, day)
