"""Invoice numbers have no gaps per issuer, even under concurrency and failed transactions."""

from __future__ import annotations

import asyncio
import uuid
from datetime import date

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from ledger.scheme import create_issuer, create_merchant
from settlement.invoices import invoice_numbers, issue_invoice


class Boom(Exception):
    """A failure after the number was taken: the whole transaction must roll back."""


@pytest.fixture(scope="module")
async def issuers(engine):
    async with engine.begin() as conn:
        ids = [await create_issuer(conn, name=f"Invoices {i} {uuid.uuid4().hex[:6]}", siren="732829320")
               for i in range(2)]
        merchant_id, _ = await create_merchant(conn, issuer_id=ids[0], legal_name="Shop SARL", trade_name="Shop",
                                               units=["EUR"])
    return ids, merchant_id


async def _invoice(engine, issuer_id: int, merchant_id: int, *, fail: bool) -> int | None:
    try:
        async with engine.begin() as conn:
            invoice = await issue_invoice(conn, issuer_id=issuer_id, merchant_id=merchant_id, batch_id=None,
                                          issued_on=date(2026, 12, 2), fee_cents=7_900, vat_cents=1_580,
                                          lines=[{"label": "frais", "fee_cents": 7_900}], actor="test")
            await asyncio.sleep(0.001)
            if fail:
                raise Boom()
            return invoice.number
    except Boom:
        return None


async def test_concurrent_invoices_with_failures_leave_no_gap(engine, issuers):
    (first, second), merchant_id = issuers
    jobs = [_invoice(engine, issuer, merchant_id, fail=index % 3 == 0)
            for index in range(60) for issuer in (first, second)]
    numbers = [n for n in await asyncio.gather(*jobs) if n is not None]
    assert len(numbers) == 80
    async with engine.connect() as conn:
        for issuer in (first, second):
            assert await invoice_numbers(conn, issuer) == list(range(1, 41))


async def test_an_invoice_can_be_neither_changed_nor_removed(engine, issuers):
    (first, _), merchant_id = issuers
    number = await _invoice(engine, first, merchant_id, fail=False)
    for statement in ("UPDATE invoices SET fee_cents = 1 WHERE issuer_id = :i AND number = :n",
                      "DELETE FROM invoices WHERE issuer_id = :i AND number = :n"):
        with pytest.raises(DBAPIError, match="append-only"):
            async with engine.begin() as conn:
                await conn.execute(text(statement), {"i": first, "n": number})
