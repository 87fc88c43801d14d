"""Wallets on real PostgreSQL: opening, tiers, limits under concurrency, transfers, campaigns."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from ledger.balances import balance
from ledger.check import check_ledger
from ledger.errors import InsufficientFunds, InvalidInput
from ledger.wallets import (
    CsvInvalid,
    Tier,
    WalletContactTaken,
    WalletLimitExceeded,
    open_campaign,
    open_wallet,
    parse_amount,
    parse_campaign_csv,
    set_tier,
    transfer_between_wallets,
    wallet_state,
)


async def test_a_resident_opens_a_wallet_with_an_email_or_a_phone(engine, bulle):
    async with engine.begin() as conn:
        by_phone = await open_wallet(conn, programme_id=bulle.id, display_name="Louis", phone="+33 6 12 34 56 78")
        state = await wallet_state(conn, by_phone.id)
    assert by_phone.phone == "+33612345678" and by_phone.email is None and by_phone.tier == "unverified"
    assert state.balance_cents == 0 and state.limits.hold_max_cents == 15_000
    with pytest.raises(InvalidInput):
        async with engine.begin() as conn:
            await open_wallet(conn, programme_id=bulle.id, display_name="Nobody")
    with pytest.raises(WalletContactTaken):
        async with engine.begin() as conn:
            await open_wallet(conn, programme_id=bulle.id, display_name="Twin", phone="+33612345678")


async def test_a_transfer_past_the_holding_limit_is_refused_with_the_limit(engine, make_wallet):
    payer, payee = await make_wallet(14_000), await make_wallet(10_000)
    with pytest.raises(WalletLimitExceeded) as refused:
        async with engine.begin() as conn:
            await transfer_between_wallets(conn, key="k1", from_wallet_id=payer.id, to_wallet_id=payee.id,
                                           amount_cents=5_001)
    assert refused.value.details["limit"] == "hold" and refused.value.details["limit_cents"] == 15_000
    async with engine.begin() as conn:
        await transfer_between_wallets(conn, key="k2", from_wallet_id=payer.id, to_wallet_id=payee.id,
                                       amount_cents=5_000)
        assert (await balance(conn, payee.account_id)).balance_cents == 15_000


async def test_what_a_wallet_receives_in_a_month_is_capped(engine, make_wallet):
    rich, poor = await make_wallet(100_000, tier="verified"), await make_wallet(0)
    async with engine.begin() as conn:
        await transfer_between_wallets(conn, key="m1", from_wallet_id=rich.id, to_wallet_id=poor.id, amount_cents=15_000)
        await transfer_between_wallets(conn, key="m2", from_wallet_id=poor.id, to_wallet_id=rich.id, amount_cents=15_000)
        await transfer_between_wallets(conn, key="m3", from_wallet_id=rich.id, to_wallet_id=poor.id, amount_cents=10_000)
    with pytest.raises(WalletLimitExceeded) as refused:
        async with engine.begin() as conn:
            await transfer_between_wallets(conn, key="m4", from_wallet_id=rich.id, to_wallet_id=poor.id, amount_cents=1)
    assert refused.value.details["limit"] == "receive_month"
    assert refused.value.details["received_month_cents"] == 25_000


async def test_concurrent_credits_cannot_both_pass_the_last_euros_of_a_limit(engine, make_wallet):
    payee = await make_wallet(0)
    payers = [await make_wallet(10_000) for _ in range(6)]

    async def send(payer):
        try:
            async with engine.begin() as conn:
                await transfer_between_wallets(conn, key="race", from_wallet_id=payer.id, to_wallet_id=payee.id,
                                               amount_cents=4_000)
            return True
        except WalletLimitExceeded:
            return False

    results = await asyncio.gather(*(send(p) for p in payers))
    assert results.count(True) == 3  # 3 × 40 ≤ 150 < 4 × 40
    async with engine.connect() as conn:
        assert (await balance(conn, payee.account_id)).balance_cents == 12_000


async def test_a_resident_cannot_send_more_than_the_wallet_holds(engine, make_wallet):
    payer, payee = await make_wallet(1_000), await make_wallet(0)
    with pytest.raises(InsufficientFunds):
        async with engine.begin() as conn:
            await transfer_between_wallets(conn, key="over", from_wallet_id=payer.id, to_wallet_id=payee.id,
                                           amount_cents=1_001)


async def test_an_operator_changes_a_tier_and_the_next_credit_obeys_it(engine, make_wallet):
    payer = await make_wallet(20_000, tier="verified")
    async with engine.begin() as conn:
        await set_tier(conn, Tier("student", 5_000, 5_000, "students"))
    student = await make_wallet(0, tier="student")
    with pytest.raises(WalletLimitExceeded):
        async with engine.begin() as conn:
            await transfer_between_wallets(conn, key="s1", from_wallet_id=payer.id, to_wallet_id=student.id,
                                           amount_cents=5_001)


def test_amounts_in_euros_become_cents_exactly():
    assert parse_amount("50") == 5_000 and parse_amount("12,5") == 1_250 and parse_amount("0.07") == 7
    for bad in ("-3", "1.234", "abc", "", "1e3"):
        with pytest.raises(ValueError):
            parse_amount(bad)


def test_a_campaign_file_with_errors_is_refused_with_every_line():
    data = "name,email,phone,amount\nA,a@x.org,,50\n,b@x.org,,50\nC,a@x.org,,50\nD,,0612,50\nE,e@x.org,,1.234\n"
    with pytest.raises(CsvInvalid) as refused:
        parse_campaign_csv(data)
    assert [e["line"] for e in refused.value.details["errors"]] == [3, 4, 5, 6]


async def test_a_town_campaign_opens_and_funds_every_wallet_in_one_transfer(engine, bulle):
    tag = uuid.uuid4().hex[:6]
    lines = ["name,email,phone,amount"] + [f"Agent {i},agent{i}-{tag}@town.org,,{50 + i % 3}" for i in range(300)]
    rows = parse_campaign_csv("\n".join(lines))
    async with engine.begin() as conn:
        result = await open_campaign(conn, key=f"vaccination-{tag}", programme_id=bulle.id, name="Vaccination",
                                     rows=rows)
    assert result.created and result.count == 300 and result.total_cents == sum(r.amount_cents for r in rows)
    async with engine.begin() as conn:
        again = await open_campaign(conn, key=f"vaccination-{tag}", programme_id=bulle.id, name="Vaccination",
                                    rows=rows)
        assert not again.created and again.transfer_id == result.transfer_id
        funded = (await conn.exec_driver_sql(
            "SELECT w.email, a.balance_cents FROM wallets w JOIN accounts a ON a.id = w.account_id "
            "WHERE w.campaign_id = $1 ORDER BY w.id", (result.campaign_id,))).all()
        assert funded == [(r.email, r.amount_cents) for r in rows]
        assert (await check_ledger(conn)).ok
