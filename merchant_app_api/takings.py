"""The shop's own numbers over HTTP: today's takings, the transaction list and its CSV
export, and the day closure (Z report). A shop only ever sees its own rows."""

from __future__ import annotations

import csv
import io
from datetime import date, datetime, timezone
from typing import Annotated, Any

import msgspec
from litestar import Controller, Response, get, post
from litestar.di import NamedDependency, Provide
from litestar.params import FromPath, FromQuery, JSONBody, QueryParameter
from sqlalchemy.ext.asyncio import AsyncEngine

from ledger import takings
from ledger.errors import NotFound
from merchant_app_api.staff import Staff, provide_staff

PAGE_SIZE_DEFAULT = 50


class TotalOut(msgspec.Struct):
    programme_id: int
    programme_name: str
    unit: str
    redeemed_count: int
    redeemed_cents: int
    refunded_count: int
    refunded_cents: int
    payment_count: int
    payment_cents: int
    net_cents: int


class TakingOut(msgspec.Struct):
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


class TodayOut(msgspec.Struct):
    day: date
    totals: list[TotalOut]
    latest: list[TakingOut]
    closed: bool


class PageOut(msgspec.Struct):
    items: list[TakingOut]
    next_before_id: int | None


class CloseIn(msgspec.Struct, forbid_unknown_fields=True):
    day: date | None = None


class ClosureOut(msgspec.Struct):
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
    late: list[dict[str, Any]]


def _taking(t: takings.Taking) -> TakingOut:
    return TakingOut(*(getattr(t, name) for name in takings.Taking.__slots__))


def _total(t: takings.ProgrammeTotal) -> TotalOut:
    return TotalOut(*(getattr(t, name) for name in takings.ProgrammeTotal.__slots__))


def _closure(c: takings.Closure) -> ClosureOut:
    return ClosureOut(*(getattr(c, name) for name in takings.Closure.__slots__))


def _today() -> date:
    return takings.paris_day(datetime.now(timezone.utc))


CSV_COLUMNS = ("id", "effective_at_paris", "kind", "programme_id", "programme_name", "unit", "amount",
               "amount_cents", "voucher_code_end", "refund_of", "refunded_by", "user_id", "transfer_id")


class TakingsController(Controller):
    path = "/merchant"
    tags = ["merchant app"]
    dependencies = {"staff": Provide(provide_staff)}

    @get("/takings/today")
    async def today(self, staff: NamedDependency[Staff], db_engine: NamedDependency[AsyncEngine]) -> TodayOut:
        day = _today()
        async with db_engine.connect() as conn:
            totals = await takings.day_totals(conn, staff.merchant_id, day)
            latest = await takings.list_takings(conn, staff.merchant_id, first=day, last=day, limit=20)
            try:
                await takings.get_closure(conn, staff.merchant_id, day)
                closed = True
            except NotFound:
                closed = False
        return TodayOut(day, [_total(t) for t in totals], [_taking(t) for t in latest], closed)

    @get("/takings")
    async def transactions(
        self, staff: NamedDependency[Staff], db_engine: NamedDependency[AsyncEngine],
        from_day: Annotated[date | None, QueryParameter(name="from")] = None,
        to_day: Annotated[date | None, QueryParameter(name="to")] = None,
        before_id: FromQuery[int | None] = None,
        limit: FromQuery[Annotated[int, msgspec.Meta(ge=1, le=takings.PAGE_SIZE_MAX)]] = PAGE_SIZE_DEFAULT,
    ) -> PageOut:
        """Transactions between two Paris days (default today), newest first, one page."""
        first, last = from_day or to_day or _today(), to_day or from_day or _today()
        async with db_engine.connect() as conn:
            found = await takings.list_takings(conn, staff.merchant_id, first=first, last=last,
                                               before_id=before_id, limit=limit + 1)
        page = found[:limit]
        return PageOut([_taking(t) for t in page], page[-1].id if len(found) > limit else None)

    @get("/takings.csv", media_type="text/csv")
    async def export(
        self, staff: NamedDependency[Staff], db_engine: NamedDependency[AsyncEngine],
        from_day: Annotated[date | None, QueryParameter(name="from")] = None,
        to_day: Annotated[date | None, QueryParameter(name="to")] = None,
    ) -> Response[bytes]:
        """The same transactions as a spreadsheet (semicolon-separated, amounts with a decimal comma,
        as French spreadsheets expect; ``amount_cents`` beside for software)."""
        first, last = from_day or to_day or _today(), to_day or from_day or _today()
        async with db_engine.connect() as conn:
            found = await takings.list_takings(conn, staff.merchant_id, first=first, last=last,
                                               limit=takings.EXPORT_ROWS_MAX)
        buffer = io.StringIO()
        writer = csv.writer(buffer, delimiter=";", lineterminator="\r\n")
        writer.writerow(CSV_COLUMNS)
        for t in reversed(found):
            writer.writerow([
                t.id, t.effective_at.astimezone(takings.PARIS).isoformat(timespec="seconds"), t.kind, t.programme_id,
                t.programme_name, t.unit, _decimal_comma(t.amount_cents), t.amount_cents, t.code_hint or "",
                t.refund_of or "", t.refunded_by or "", t.user_id or "", t.transfer_id,
            ])
        name = f"circuit-{staff.merchant_id}-{first.isoformat()}_{last.isoformat()}.csv"
        return Response(buffer.getvalue().encode("utf-8-sig"), media_type="text/csv; charset=utf-8",
                        headers={"Content-Disposition": f'attachment; filename="{name}"'})

    @post("/closures", status_code=201)
    async def close(self, staff: NamedDependency[Staff], data: JSONBody[CloseIn], db_engine: NamedDependency[AsyncEngine]) -> ClosureOut:
        """Close a day (default today, Paris): the Z report, written once."""
        async with db_engine.begin() as conn:
            closure = await takings.close_day(conn, staff.merchant_id, data.day or _today(), user_id=staff.user_id,
                                              actor=staff.actor)
        return _closure(closure)

    @get("/closures/{day:date}")
    async def closure(self, staff: NamedDependency[Staff], day: FromPath[date], db_engine: NamedDependency[AsyncEngine]) -> ClosureOut:
        async with db_engine.connect() as conn:
            return _closure(await takings.get_closure(conn, staff.merchant_id, day))


def _decimal_comma(cents: int) -> str:
    sign = "-" if cents < 0 else ""
    return f"{sign}{abs(cents) // 100},{abs(cents) % 100:02d}"
