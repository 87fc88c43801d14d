"""Property: over random months of redemptions, refunds, back-dated takings, returned transfers
and fee rules, settled month after month, money is conserved (the ledger's checks pass) and no
taking is paid twice or lost."""

from __future__ import annotations

import asyncio
import uuid
from datetime import datetime, timezone

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import text

from fixtures_settlement import make_settlement_scheme
from ledger.accounts import AccountKind, open_account
from ledger.check import check_ledger
from ledger.database import create_engine
from ledger.errors import InsufficientFunds
from ledger.transfers import Posting, transfer
from settlement import batches
from settlement.fees import create_rule, create_waiver

MERCHANTS = 3
MONTHS = ("2026-07", "2026-08", "2026-09", "2026-10")

event = st.one_of(
    st.tuples(st.just("take"), st.integers(0, MERCHANTS - 1), st.sampled_from(["gift", "culture", "bulle"]),
              st.integers(1, 40_000), st.integers(1, 28)),
    st.tuples(st.just("refund"), st.integers(0, 10**6), st.integers(1, 28)),
    # Written on the 1st of the next month, before this month is prepared.
    st.tuples(st.just("refund_next"), st.integers(0, 10**6)),
    st.tuples(st.just("late"), st.integers(0, MERCHANTS - 1), st.integers(1, 20_000)),
    st.tuples(st.just("counter"), st.integers(0, MERCHANTS - 1), st.integers(1, 30_000)),
)
month = st.tuples(st.lists(event, max_size=8), st.lists(st.integers(0, MERCHANTS - 1), max_size=2))
rules = st.fixed_dictionaries({
    "gift": st.tuples(st.integers(0, 1_000), st.integers(0, 50), st.integers(0, 600)),
    "culture": st.tuples(st.integers(0, 1_000), st.integers(0, 50), st.integers(0, 600)),
    "max_cents": st.none() | st.integers(600, 5_000),
    "waived": st.booleans(),
    "own_rate": st.none() | st.integers(0, 1_500),  # a rule for merchant 1 alone, more specific
})


def at(label: str, day: int) -> datetime:
    year, number = map(int, label.split("-"))
    return datetime(year, number, day, 12, tzinfo=timezone.utc)


async def scenario(engine, users, plan, months) -> None:
    scheme = await make_settlement_scheme(engine, users)
    merchants = [await scheme.merchant() for _ in range(MERCHANTS)]
    programmes = {"gift": scheme.gift, "culture": scheme.culture, "bulle": scheme.bulle}
    async with engine.begin() as conn:
        for name in ("gift", "culture"):
            rate, fixed, minimum = plan[name]
            await create_rule(conn, issuer_id=scheme.issuer_id, actor="p", rate_bp=rate, fixed_cents=fixed,
                              min_cents=minimum, max_cents=plan["max_cents"], programme_id=programmes[name].id)
        await create_rule(conn, issuer_id=scheme.issuer_id, actor="p", rate_bp=0, programme_id=scheme.bulle.id)
        if plan["own_rate"] is not None:
            await create_rule(conn, issuer_id=scheme.issuer_id, actor="p", rate_bp=plan["own_rate"],
                              programme_id=scheme.gift.id, merchant_id=merchants[1])
        counters = [await open_account(conn, kind=AccountKind.COUNTER, unit="EUR", owner_type="merchant",
                                       owner_id=merchant_id) for merchant_id in merchants]
        if plan["waived"]:
            await create_waiver(conn, issuer_id=scheme.issuer_id, actor="p", sponsor_name="Ville",
                                merchant_ids=[merchants[0]])
    takings: list[int] = []
    counter_sales = [0] * MERCHANTS
    settled_periods: list[str] = []
    refunded = {"gift": 0, "culture": 0, "bulle": 0}
    names = {programme.id: name for name, programme in programmes.items()}
    planned = list(zip(MONTHS, months))
    for index, (label, (events, returns)) in enumerate(planned):
        next_month = MONTHS[index + 1] if index + 1 < len(planned) else None
        for item in events:
            if item[0] == "take":
                _, who, programme, amount, day = item
                takings.append(await scheme.take(merchants[who], programmes[programme], amount, at(label, day)))
            elif item[0] in ("refund", "refund_next") and takings and (item[0] == "refund" or next_month):
                moment = at(label, item[2]) if item[0] == "refund" else at(next_month, 1)
                try:
                    refund = await scheme.refund(takings[item[1] % len(takings)], moment)
                    takings.append(refund)
                    async with engine.connect() as conn:
                        row = (await conn.execute(text("SELECT programme_id, amount_cents FROM merchant_takings "
                                                       "WHERE id = :id"), {"id": refund})).one()
                    refunded[names[row.programme_id]] -= row.amount_cents
                except InsufficientFunds:
                    pass  # the shop's account cannot cover it: a real refund is refused too
                except Exception as error:  # refunded already (unique refund_of) or a refund itself
                    assert "refund" in str(error) or "check" in str(error).lower(), error
            elif item[0] == "counter":
                # The shop sold Bulles for cash at its counter: it owes the reserve (netted by settlement).
                async with engine.begin() as conn:
                    wallet = await open_account(conn, kind=AccountKind.WALLET, unit="BUL", owner_type="p")
                    await transfer(conn, key=f"p-counter-{uuid.uuid4()}", kind="wallet.counter_topup", postings=[
                        Posting(counters[item[1]], -item[2]), Posting(scheme.bulle.reserve_account_id, item[2]),
                        Posting(scheme.bulle.float_account_id, -item[2]), Posting(wallet, item[2])])
                counter_sales[item[1]] += item[2]
            elif item[0] == "late" and settled_periods:
                # Back-dated into a month already settled: must land in a later batch.
                takings.append(await scheme.take(merchants[item[1]], scheme.gift, item[2], at(settled_periods[-1], 27)))
        async with engine.begin() as conn:
            batch = await batches.prepare(conn, issuer_id=scheme.issuer_id, period=label, user_id=scheme.operator_id)
        async with engine.begin() as conn:
            await batches.approve(conn, batch_id=batch.id, user_id=scheme.approver_id)
            await batches.export(conn, batch_id=batch.id, user_id=scheme.approver_id)
        async with engine.begin() as conn:
            paid = {p.merchant_id for p in await batches.batch_payments(conn, batch.id) if p.status == "sent"}
            for who in returns:
                if merchants[who] in paid:
                    await batches.mark_returned(conn, batch_id=batch.id, merchant_id=merchants[who],
                                                user_id=scheme.approver_id, reason="AC01")
                    paid.discard(merchants[who])
        settled_periods.append(label)

    async with engine.connect() as conn:
        report = await check_ledger(conn)
        assert report.ok, report.discrepancies
        # Everything taken is settled: each voucher programme's reserve backs exactly the vouchers
        # refunded to their holders (a refund paid out of another programme's takings included).
        for name in ("gift", "culture"):
            reserve = await conn.scalar(text("SELECT balance_cents FROM accounts WHERE id = :id"),
                                        {"id": programmes[name].reserve_account_id})
            assert reserve == refunded[name], name
        # Each taking is in exactly one batch (the primary key says at most one; this says at least one).
        claimed = await conn.scalar(text("SELECT count(*) FROM settlement_items WHERE taking_id = ANY(:ids)"),
                                    {"ids": takings})
        assert claimed == len(takings)
        for index, merchant_id in enumerate(merchants):
            figures = (await conn.execute(text(
                """
                SELECT
                  (SELECT coalesce(sum(t.amount_cents), 0) FROM merchant_takings t JOIN programmes p
                     ON p.id = t.programme_id WHERE t.merchant_id = :m AND p.kind <> 'local_currency') AS taken,
                  (SELECT coalesce(sum(collect_cents), 0) FROM settlement_lines l JOIN programmes p
                     ON p.id = l.programme_id WHERE l.merchant_id = :m AND p.kind <> 'local_currency') AS collected,
                  (SELECT balance_cents FROM accounts WHERE kind = 'merchant' AND owner_id = :ms AND unit = 'EUR')
                     AS on_account,
                  (SELECT coalesce(sum(collect_cents - fee_cents - vat_cents + sponsor_cents), 0)
                     FROM settlement_lines WHERE merchant_id = :m) AS due,
                  (SELECT coalesce(sum(payout_cents), 0) FROM settlement_payments
                     WHERE merchant_id = :m AND status <> 'returned') AS paid_out,
                  (SELECT coalesce(sum(counter_cents), 0) FROM settlement_payments WHERE merchant_id = :m)
                     AS counter_netted,
                  (SELECT balance_cents FROM accounts WHERE id = :counter) AS counter_owed,
                  (SELECT a.balance_cents FROM settlement_accounts s JOIN accounts a ON a.id = s.account_id
                     WHERE s.owner_type = 'merchant' AND s.owner_id = :m AND s.purpose = 'payable') AS carried
                """), {"m": merchant_id, "ms": str(merchant_id), "counter": counters[index]})).one()
            # Vouchers taken are either still on the shop's account or were collected once.
            assert figures.taken == figures.collected + figures.on_account
            # Counter sales are netted once: what is not netted yet is still owed on the counter account.
            assert figures.counter_netted - figures.counter_owed == counter_sales[index]
            # What the shop was owed, less its counter sales netted, is paid (and not returned) or carried.
            assert figures.due - figures.counter_netted == figures.paid_out + (figures.carried or 0)


def test_money_is_conserved_and_nothing_is_paid_twice_or_lost(database_url):
    loop = asyncio.new_event_loop()
    engine = create_engine(database_url, pool_size=3, max_overflow=2)
    users = loop.run_until_complete(make_settlement_scheme(engine))

    @settings(max_examples=20, deadline=None, suppress_health_check=list(HealthCheck))
    @given(plan=rules, months=st.lists(month, min_size=1, max_size=len(MONTHS)))
    def check(plan, months):
        loop.run_until_complete(scenario(engine, users, plan, months))

    try:
        check()
    finally:
        loop.run_until_complete(engine.dispose())
        loop.close()
