"""Shared fixtures of the vouchers capability, for any capability's tests.

``make_programme(**rules)`` creates an issuer's programme with the given rules (see
``ledger.programmes.RULE_FIELDS``; kind ``gift`` and unit ``EUR`` unless told);
``issue_voucher(amount_cents, programme=None, **rules)`` sells one voucher of that amount
(through the ledger, a real signed token and code) and returns an :class:`IssuedVoucher`.

    async def test_merchant_redeems(issue_voucher):
        voucher = await issue_voucher(2500, categories_excluded=["supermarket"])
        voucher.token, voucher.code, voucher.account_id, voucher.programme_id
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from ledger import voucher_print
from ledger.programmes import ProgrammeRules, create_programme, get_rules
from ledger.scheme import create_issuer
from ledger.vouchers import VoucherLine, sell_vouchers

TEST_SIREN = "732829320"
_keys = itertools.count(1)


def valid_siret(number: int) -> str:
    """A valid SIRET (an establishment of the test SIREN), different for each ``number`` < 10,000."""
    from stdnum import luhn

    base = f"{TEST_SIREN}{number:04d}"
    return base + luhn.calc_check_digit(base)


async def audit_events(conn: AsyncConnection, event_type: str) -> list[dict[str, Any]]:
    """Payloads of the audit events of a type, sealed into the chain or waiting to be."""
    rows = (await conn.execute(
        text(
            "SELECT convert_from(body, 'UTF8')::jsonb -> 'payload' FROM audit_records WHERE event_type = :t "
            "UNION ALL SELECT payload FROM audit_pending WHERE event_type = :t"
        ),
        {"t": event_type},
    )).scalars().all()
    return list(rows)


@pytest_asyncio.fixture
async def voucher_zip_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Path]:
    """Order ZIPs rendered during the test go to its own directory, not the user's data
    directory; the test ends once the renderings it started (issuing starts one) have."""
    directory = tmp_path / "voucher-zips"
    monkeypatch.setattr(voucher_print, "zip_dir", lambda: directory)
    yield directory
    await voucher_print.renders_finished()


async def download_order_zip(client: httpx.AsyncClient, order_id: int, headers: dict[str, str],
                             timeout_s: float = 60) -> httpx.Response:
    """GET the order's ZIP, asking again while it is being rendered (202), as a client would
    (sooner than Retry-After says: a test's orders are small)."""
    deadline = time.monotonic() + timeout_s
    while True:
        response = await client.get(f"/voucher-orders/{order_id}/vouchers.zip", headers=headers)
        if response.status_code != 202 or time.monotonic() > deadline:
            return response
        assert int(response.headers["retry-after"]) >= 1
        await asyncio.sleep(0.1)


@dataclass(frozen=True, slots=True)
class IssuedVoucher:
    id: int
    token: str
    code: str
    account_id: int
    programme_id: int
    page_secret: str
    amount_cents: int
    expires_at: datetime


@pytest_asyncio.fixture(scope="module")
async def make_programme(engine: AsyncEngine) -> Callable[..., Awaitable[ProgrammeRules]]:
    async with engine.begin() as conn:
        issuer_id = await create_issuer(conn, name="Office de commerce (test)", siren=TEST_SIREN)

    async def make(*, kind: str = "gift", unit: str = "EUR", **rules: Any) -> ProgrammeRules:
        rules.setdefault("name", f"Chèque cadeau test {next(_keys)}")
        async with engine.begin() as conn:
            return await create_programme(conn, issuer_id=issuer_id, kind=kind, unit=unit, actor="test", **rules)

    return make


@pytest_asyncio.fixture(scope="module")
async def issue_voucher(engine: AsyncEngine, make_programme) -> Callable[..., Awaitable[IssuedVoucher]]:
    async def issue(amount_cents: int = 2000, *, programme: ProgrammeRules | int | None = None,
                    beneficiary_name: str = "Camille Test", **rules: Any) -> IssuedVoucher:
        if programme is None:
            programme = await make_programme(**rules)
        async with engine.begin() as conn:
            if isinstance(programme, int):
                programme = await get_rules(conn, programme)
            (voucher,) = await sell_vouchers(
                conn, programme=programme, key=f"test-voucher-sale-{programme.id}-{next(_keys)}",
                lines=[VoucherLine(amount_cents, beneficiary_name)], actor="test",
            )
        return IssuedVoucher(voucher.id, voucher.token, voucher.code, voucher.account_id, voucher.programme_id,
                             voucher.page_secret, amount_cents, voucher.expires_at)

    return issue

