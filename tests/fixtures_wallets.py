"""Shared fixtures of the wallets capability: a local currency and funded wallets.

``bulle`` (per module): the local-currency programme "La Bulle" (unit BUL) of the merchants'
test issuer, so ``approved_merchant(programme_ids=[bulle.id])`` makes a shop that accepts it.
``make_wallet(amount_cents=0, tier="unverified")``: opens a wallet, funds it by an online
top-up's issuance, and returns the ``Wallet``.
"""

from __future__ import annotations

import uuid

import pytest
import pytest_asyncio

from ledger.accounts import ensure_unit
from ledger.scheme import Programme, create_programme, issue


@pytest_asyncio.fixture(scope="module")
async def bulle(engine, merchant_issuer: int) -> Programme:
    async with engine.begin() as conn:
        await ensure_unit(conn, "BUL", "Bulle")
        return await create_programme(conn, issuer_id=merchant_issuer, kind="local_currency", name="La Bulle",
                                      unit="BUL")


@pytest.fixture
def make_wallet(engine, bulle):
    from ledger.wallets import open_wallet

    async def make(amount_cents: int = 0, *, tier: str = "unverified", name: str = "Camille Martin"):
        async with engine.begin() as conn:
            wallet = await open_wallet(conn, programme_id=bulle.id, display_name=name,
                                       email=f"r-{uuid.uuid4().hex[:10]}@example.org", tier=tier)
            if amount_cents:
                await issue(conn, key=f"fund-{wallet.id}", programme=bulle, to_account_id=wallet.account_id,
                            amount_cents=amount_cents)
        return wallet

    return make
