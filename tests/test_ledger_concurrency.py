"""Many writers at once: the floor holds, nothing is lost, nobody deadlocks."""

from __future__ import annotations

import asyncio
import random

from sqlalchemy import text

from ledger.accounts import AccountKind, ensure_unit, get_account, open_account
from ledger.check import check_ledger
from ledger.errors import InsufficientFunds
from ledger.transfers import Posting, transfer

CLIENTS = 120


async def _fund(engine, unit: str, amount_cents: int) -> tuple[int, int]:
    async with engine.begin() as conn:
        await ensure_unit(conn, unit, unit)
        float_id = await open_account(conn, kind=AccountKind.ISSUER_FLOAT, unit=unit)
        wallet = await open_account(conn, kind=AccountKind.WALLET, unit=unit)
        await transfer(conn, key=f"fund-{wallet}", kind="issue",
                       postings=[Posting(float_id, -amount_cents), Posting(wallet, amount_cents)])
    return float_id, wallet


async def test_simultaneous_payments_never_overdraw_and_exactly_the_fitting_ones_pass(engine):
    async with engine.connect() as conn:
        assert int(await conn.scalar(text("SHOW max_connections"))) > CLIENTS
    _, wallet = await _fund(engine, "BUL", 10_000)
    async with engine.begin() as conn:
        shop = await open_account(conn, kind=AccountKind.MERCHANT, unit="BUL")
    rng = random.Random(20261124)
    amounts = [rng.randint(1, 500) for _ in range(CLIENTS)]
    start = asyncio.Event()

    async def pay(index: int, amount: int) -> bool:
        await start.wait()
        try:
            async with engine.begin() as conn:
                await transfer(conn, key=f"concurrent-{wallet}-{index}", kind="payment",
                               postings=[Posting(wallet, -amount), Posting(shop, amount)])
            return True
        except InsufficientFunds:
            return False

    tasks = [asyncio.create_task(pay(i, amount)) for i, amount in enumerate(amounts)]
    start.set()
    outcomes = await asyncio.gather(*tasks)

    paid = sum(a for a, ok in zip(amounts, outcomes) if ok)
    refused = [a for a, ok in zip(amounts, outcomes) if not ok]
    async with engine.connect() as conn:
        remaining = (await get_account(conn, wallet)).balance_cents
        assert (await get_account(conn, shop)).balance_cents == paid
        assert (await check_ledger(conn)).ok
    assert remaining == 10_000 - paid >= 0
    assert refused, "the amounts were chosen to overdraw: some must be refused"
    # The balance only went down, so a refused payment did not fit at its time nor at the end.
    assert all(amount > remaining for amount in refused)


async def test_crossing_payments_between_the_same_accounts_do_not_deadlock(engine):
    _, alice = await _fund(engine, "BUL", 50_000)
    _, bob = await _fund(engine, "BUL", 50_000)

    async def pay(index: int) -> None:
        source, target = (alice, bob) if index % 2 else (bob, alice)
        async with engine.begin() as conn:
            await transfer(conn, key=f"cross-{alice}-{index}", kind="payment",
                           postings=[Posting(target, 100), Posting(source, -100)])

    await asyncio.wait_for(asyncio.gather(*(pay(i) for i in range(CLIENTS))), timeout=120)
    async with engine.connect() as conn:
        total = (await get_account(conn, alice)).balance_cents + (await get_account(conn, bob)).balance_cents
    assert total == 100_000
