"""Redemptions that reach the server together share one transaction: each is still its own
redemption (its own transfer, takings row, audit events, receipt and refusal).

To make a batch for sure, a first redemption is held on a locked voucher account while the
others arrive; they then wait together and go as the next batch, in one transaction."""

from __future__ import annotations

import asyncio
import contextlib
import uuid

from sqlalchemy import text

import merchant_app_api.staff
from api.app import create_app
from ledger.database import create_engine
from merchant_app_api import redeem


async def _redeem(client, shop, amount_cents, *, token, key=None, headers=None):
    return await client.post("/merchant/redeem", json={"amount_cents": amount_cents, "token": token},
                             headers={**(headers or shop.headers), "Idempotency-Key": key or uuid.uuid4().hex})


@contextlib.asynccontextmanager
async def _one_batch(engine, client, shop, held_voucher):
    """While the redemptions started in the block wait, one redemption of ``held_voucher`` is
    held in the batch before theirs (its account locked by another transaction); on leaving
    the block, once all of them wait, it is let go and they run as one batch."""
    started: list[asyncio.Task] = []
    async with engine.connect() as blocker:
        await blocker.begin()
        await blocker.execute(text("SELECT 1 FROM accounts WHERE id = :id FOR UPDATE"), {"id": held_voucher.account_id})
        first = asyncio.create_task(_redeem(client, shop, 1, token=held_voucher.token))
        while not await blocker.scalar(text("SELECT count(*) FROM pg_locks WHERE NOT granted")):
            await asyncio.sleep(0.01)
        yield started
        batcher = redeem._batcher(engine)
        while batcher.waiting < len(started):
            await asyncio.sleep(0.01)
        await blocker.rollback()
    assert (await first).status_code == 201


async def _transactions_of(engine, taking_ids: list[int]) -> set[str]:
    async with engine.connect() as conn:
        return set((await conn.scalars(text("SELECT xmin::text FROM merchant_takings WHERE id = ANY(:ids)"),
                                       {"ids": taking_ids})).all())


async def test_two_requests_with_one_key_in_one_batch_are_one_redemption(client, engine, approved_merchant,
                                                                         issue_voucher, merchant_programme):
    shop = await approved_merchant()
    held = await issue_voucher(1000, programme=merchant_programme)
    voucher = await issue_voucher(1000, programme=merchant_programme)
    key = uuid.uuid4().hex
    async with _one_batch(engine, client, shop, held) as started:
        started += [asyncio.create_task(_redeem(client, shop, 300, token=voucher.token, key=key)) for _ in range(2)]
    answers = [await task for task in started]
    assert sorted(a.status_code for a in answers) == [200, 201]
    assert answers[0].content == answers[1].content  # the same receipt, byte for byte
    async with engine.connect() as conn:
        takings = await conn.scalar(text("SELECT count(*) FROM merchant_takings WHERE merchant_id = :m AND client_key = :k"),
                                    {"m": shop.id, "k": key})
        balance = await conn.scalar(text("SELECT balance_cents FROM accounts WHERE id = :id"), {"id": voucher.account_id})
    assert (takings, balance) == (1, 700)
    assert (await _redeem(client, shop, 300, token=voucher.token, key=key)).content == answers[0].content


async def test_a_refusal_in_a_batch_refuses_only_its_redemption(client, engine, approved_merchant, issue_voucher,
                                                                merchant_programme):
    shop = await approved_merchant()
    other_shop = await approved_merchant()
    held = await issue_voucher(1000, programme=merchant_programme)
    vouchers = [await issue_voucher(1000, programme=merchant_programme) for _ in range(3)]
    async with _one_batch(engine, client, shop, held) as started:
        started += [
            asyncio.create_task(_redeem(client, shop, 400, token=vouchers[0].token)),
            asyncio.create_task(_redeem(client, shop, 5000, token=vouchers[1].token)),  # more than it holds
            asyncio.create_task(_redeem(client, other_shop, 250, token=vouchers[2].token)),
            asyncio.create_task(_redeem(client, shop, 100, token=vouchers[0].token,
                                        headers={"Authorization": f"Bearer ck_unknown-{uuid.uuid4().hex}"})),
            asyncio.create_task(_redeem(client, shop, 0, token=vouchers[2].token)),
            asyncio.create_task(_redeem(client, shop, 600, token=vouchers[0].token)),
        ]
    answers = [await task for task in started]
    assert [a.status_code for a in answers] == [201, 409, 201, 401, 422, 201]
    assert [answers[i].json()["code"] for i in (1, 3, 4)] == ["insufficient_balance", "unauthenticated", "amount_invalid"]
    assert answers[1].json()["available_cents"] == 1000 and answers[1].json()["detail_fr"]
    receipts = [answers[i].json()["receipt"] for i in (0, 2, 5)]
    assert [r["voucher_balance_after_cents"] for r in receipts] == [600, 750, 0]
    assert [r["merchant_id"] for r in receipts] == [shop.id, other_shop.id, shop.id]
    assert len(await _transactions_of(engine, [r["taking_id"] for r in receipts])) == 1  # one transaction
    async with engine.connect() as conn:
        balances = (await conn.scalars(text("SELECT balance_cents FROM accounts WHERE id = ANY(:ids) ORDER BY id"),
                                       {"ids": [v.account_id for v in vouchers]})).all()
        events = (await conn.execute(text(
            "SELECT event_type, count(*) FROM audit_pending WHERE payload->>'transfer_id' = ANY(:ids) GROUP BY 1 ORDER BY 1"),
            {"ids": [str(r["transfer_id"]) for r in receipts]})).all()
    assert balances == [0, 1000, 750]
    assert [tuple(e) for e in events] == [("ledger.transfer", 3), ("voucher.redeemed", 3)]


async def test_each_scan_of_one_device_in_a_batch_counts(client, engine, approved_merchant, issue_voucher,
                                                        merchant_programme, monkeypatch):
    monkeypatch.setattr(merchant_app_api.staff, "SCANS_PER_SESSION_PER_MINUTE", 3)
    shop = await approved_merchant()
    held = await issue_voucher(1000, programme=merchant_programme)
    voucher = await issue_voucher(1000, programme=merchant_programme)
    async with _one_batch(engine, client, shop, held) as started:  # the held one is this device's first scan
        started += [asyncio.create_task(_redeem(client, shop, 100, token=voucher.token)) for _ in range(3)]
    answers = [await task for task in started]
    assert [a.status_code for a in answers] == [201, 201, 429]
    assert answers[2].json()["code"] == "rate_limited"


async def test_batches_of_two_server_processes_on_the_same_vouchers_take_exactly_what_fits(
        client, engine, database_url, approved_merchant, issue_voucher, merchant_programme, monkeypatch):
    """Two processes (two engines, two batchers) redeem the same vouchers in the opposite
    order: their batches queue on the accounts, never deadlock, and the ledger's floor holds."""
    import httpx

    monkeypatch.setattr(merchant_app_api.staff, "SCANS_PER_SESSION_PER_MINUTE", 1000)
    shops = [await approved_merchant() for _ in range(2)]
    vouchers = [await issue_voucher(1000, programme=merchant_programme) for _ in range(4)]
    second_engine = create_engine(database_url)
    try:
        transport = httpx.ASGITransport(app=create_app(engine=second_engine, background=False))
        async with httpx.AsyncClient(transport=transport, base_url="http://circuit.test") as second:
            answers = await asyncio.gather(*(
                _redeem(process, shops[n % 2], 90, token=voucher.token)
                for n in range(24)
                for process, voucher in ((client, vouchers[n % 4]), (second, vouchers[3 - n % 4]))))
    finally:
        await second_engine.dispose()
    taken = [a.json()["receipt"] for a in answers if a.status_code == 201]
    assert {a.json()["code"] for a in answers if a.status_code != 201} == {"insufficient_balance"}  # 12 × 90 > 1000
    async with engine.connect() as conn:
        balances = dict((await conn.execute(text("SELECT id, balance_cents FROM accounts WHERE id = ANY(:ids)"),
                                            {"ids": [v.account_id for v in vouchers]})).all())
        credited = await conn.scalar(text("SELECT sum(balance_cents) FROM accounts WHERE id = ANY(:ids)"),
                                     {"ids": [s.accounts["EUR"] for s in shops]})
    for voucher in vouchers:
        assert 0 <= balances[voucher.account_id] == 1000 - 90 * sum(1 for r in taken if r["voucher_id"] == voucher.id)
    assert credited == 90 * len(taken) == 4000 - sum(balances.values())


async def test_a_batch_that_fails_whole_runs_again_request_by_request(engine, database_url, approved_merchant,
                                                                      issue_voucher, merchant_programme):
    """A server whose lock waits time out: a batch with one redemption of a voucher held by
    someone else fails whole (nothing of it written), then runs again one request at a time,
    so that only that redemption fails and the others are taken."""
    import httpx
    from sqlalchemy.ext.asyncio import create_async_engine

    shop = await approved_merchant()
    held, blocked, *free = [await issue_voucher(1000, programme=merchant_programme) for _ in range(4)]
    impatient = create_async_engine(database_url, connect_args={"server_settings": {"lock_timeout": "1s"}})
    try:
        transport = httpx.ASGITransport(app=create_app(engine=impatient, background=False))
        async with httpx.AsyncClient(transport=transport, base_url="http://circuit.test") as client, \
                engine.connect() as other:
            await other.begin()
            await other.execute(text("SELECT 1 FROM accounts WHERE id = :id FOR UPDATE"), {"id": blocked.account_id})
            async with _one_batch(impatient, client, shop, held) as started:
                started += [asyncio.create_task(_redeem(client, shop, 100, token=v.token)) for v in (free[0], blocked, free[1])]
            answers = [await task for task in started]
            await other.rollback()
    finally:
        await impatient.dispose()
    assert [a.status_code for a in answers] == [201, 500, 201]
    assert answers[1].json()["code"] == "internal_error"
    taken = [answers[i].json()["receipt"] for i in (0, 2)]
    assert len(await _transactions_of(engine, [r["taking_id"] for r in taken])) == 2  # each alone
    async with engine.connect() as conn:
        balances = (await conn.scalars(text("SELECT balance_cents FROM accounts WHERE id = ANY(:ids) ORDER BY id"),
                                       {"ids": [v.account_id for v in (blocked, *free)]})).all()
    assert balances == [1000, 900, 900]
