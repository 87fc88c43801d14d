"""Redemption under pressure: many phones at once on one voucher, and a model of the balance."""

from __future__ import annotations

import asyncio
import random
import uuid

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import text

import merchant_app_api.staff
from ledger import redemptions
from ledger.errors import DomainError
from merchant_app_api.receipts import receipt_signing_key

CONCURRENT_REDEMPTIONS = 200


async def test_200_concurrent_redemptions_take_exactly_what_fits(client, engine, approved_merchant, issue_voucher,
                                                                  merchant_programme, monkeypatch):
    monkeypatch.setattr(merchant_app_api.staff, "SCANS_PER_SESSION_PER_MINUTE", 10 * CONCURRENT_REDEMPTIONS)
    shop = await approved_merchant()
    face_cents = 20_000
    voucher = await issue_voucher(face_cents, programme=merchant_programme)
    rng = random.Random(5)
    amounts = [rng.randint(1, 400) for _ in range(CONCURRENT_REDEMPTIONS)]

    async def one(amount: int):
        return amount, await client.post("/merchant/redeem", json={"token": voucher.token, "amount_cents": amount},
                                         headers={**shop.headers, "Idempotency-Key": uuid.uuid4().hex})

    answers = await asyncio.gather(*(one(a) for a in amounts))
    taken = [a for a, r in answers if r.status_code == 201]
    refused = [(a, r.json()) for a, r in answers if r.status_code != 201]
    assert sum(amounts) > face_cents and taken and refused  # the test does exercise both outcomes
    assert {body["code"] for _, body in refused} == {"insufficient_balance"}

    async with engine.connect() as conn:
        left = await conn.scalar(text("SELECT balance_cents FROM accounts WHERE id = :id"), {"id": voucher.account_id})
        credited = await conn.scalar(text("SELECT balance_cents FROM accounts WHERE id = :id"), {"id": shop.accounts["EUR"]})
        rows = (await conn.execute(text("SELECT count(*), coalesce(sum(amount_cents), 0) FROM merchant_takings "
                                        "WHERE voucher_id = :id"), {"id": voucher.id})).one()
    assert left >= 0
    assert left + sum(taken) == face_cents
    assert credited == sum(taken)
    assert tuple(rows) == (len(taken), sum(taken))
    # A refused amount did not fit in what was left then, which is at least what is left now.
    for amount, body in refused:
        assert amount > body["available_cents"] >= left
    # Every receipt names a different balance after it: the ledger serialised them.
    afters = sorted(r.json()["receipt"]["voucher_balance_after_cents"] for _, r in answers if r.status_code == 201)
    assert len(set(afters)) == len(afters) and afters[0] == left


operation = st.one_of(
    st.tuples(st.just("redeem"), st.integers(min_value=-5, max_value=3000)),
    st.tuples(st.just("refund"), st.integers(min_value=0, max_value=20)),
    st.tuples(st.just("replay"), st.integers(min_value=0, max_value=20)),
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(operations=st.lists(operation, min_size=1, max_size=12))
async def test_voucher_and_shop_balances_follow_the_model(engine, approved_merchant, issue_voucher, merchant_programme, operations):
    """Whatever mix of redemptions, refunds and replays: the voucher holds its face value
    minus what was taken and not refunded, the shop holds the rest, nothing goes negative,
    and a request is refused exactly when the model says so."""
    shop = await approved_merchant()
    face_cents = 5_000
    voucher = await issue_voucher(face_cents, programme=merchant_programme)
    key = receipt_signing_key()
    model_left = face_cents
    takings: list[tuple[int, int, str]] = []  # (taking id, amount, client key)
    refunded: set[int] = set()
    for op, value in operations:
        client_key = uuid.uuid4().hex
        try:
            async with engine.begin() as conn:
                if op == "redeem":
                    receipt = await redemptions.redeem(conn, key, merchant_id=shop.id, user_id=shop.owner_id,
                                                       amount_cents=value, client_key=client_key, token=voucher.token,
                                                       actor="test")
                elif op == "refund" and takings:
                    taking_id, _, _ = takings[value % len(takings)]
                    receipt = await redemptions.refund(conn, key, merchant_id=shop.id, user_id=shop.owner_id,
                                                       is_owner=True, taking_id=taking_id, client_key=client_key,
                                                       actor="test")
                elif op == "replay" and takings:
                    _, amount, first_key = takings[value % len(takings)]
                    receipt = await redemptions.redeem(conn, key, merchant_id=shop.id, user_id=shop.owner_id,
                                                       amount_cents=amount, client_key=first_key, token=voucher.token,
                                                       actor="test")
                    assert receipt.replayed
                    continue
                else:
                    continue
        except DomainError as refusal:
            if op == "redeem":
                expected = "amount_invalid" if value <= 0 else "insufficient_balance"
                assert value <= 0 or value > model_left
                assert refusal.code == expected
            else:
                assert refusal.code == "already_refunded" and takings[value % len(takings)][0] in refunded
            continue
        if op == "redeem":
            assert 0 < value <= model_left
            model_left -= value
            takings.append((receipt.taking_id, value, client_key))
        else:
            taking_id, amount, _ = takings[value % len(takings)]
            assert taking_id not in refunded
            refunded.add(taking_id)
            model_left += amount
        assert receipt.body["voucher_balance_after_cents"] == model_left
    async with engine.connect() as conn:
        left = await conn.scalar(text("SELECT balance_cents FROM accounts WHERE id = :id"), {"id": voucher.account_id})
        net = await conn.scalar(text("SELECT coalesce(sum(amount_cents), 0) FROM merchant_takings WHERE voucher_id = :id"),
                                {"id": voucher.id})
    assert left == model_left >= 0
    assert net == face_cents - model_left
