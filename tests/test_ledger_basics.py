"""The ledger's rules, one story each, on real PostgreSQL."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from ledger.accounts import AccountKind, ensure_unit, get_account, open_account
from ledger.balances import balance
from ledger.check import check_ledger
from ledger.errors import (
    AccountNotFound,
    AlreadyReversed,
    AmountExceedsHold,
    HoldExpired,
    HoldNotPending,
    IdempotencyConflict,
    InsufficientFunds,
    InvalidTransfer,
    NotReversible,
    UnbalancedTransfer,
)
from ledger.transfers import Posting, get_transfer, hold, post_hold, reverse, transfer, void_hold


@pytest.fixture
async def accounts(engine):
    """A float that may go negative, and two wallets that may not, in Bulles."""
    async with engine.begin() as conn:
        await ensure_unit(conn, "BUL", "Bulle")
        float_id = await open_account(conn, kind=AccountKind.ISSUER_FLOAT, unit="BUL")
        alice = await open_account(conn, kind=AccountKind.WALLET, unit="BUL")
        bob = await open_account(conn, kind=AccountKind.WALLET, unit="BUL")
        await transfer(conn, key=f"fund-{alice}", kind="issue",
                       postings=[Posting(float_id, -10_000), Posting(alice, 10_000)])
    return float_id, alice, bob


async def test_a_payment_moves_value_and_balances_follow(engine, accounts):
    _, alice, bob = accounts
    async with engine.begin() as conn:
        result = await transfer(conn, key=f"pay-{alice}", kind="payment",
                                postings=[Posting(alice, -2_500), Posting(bob, 2_500)])
        assert result.created
        assert (await get_account(conn, alice)).balance_cents == 7_500
        assert (await get_account(conn, bob)).balance_cents == 2_500


async def test_retry_with_same_key_returns_the_first_transfer_and_moves_nothing(engine, accounts):
    _, alice, bob = accounts
    postings = [Posting(alice, -1_000), Posting(bob, 1_000)]
    async with engine.begin() as conn:
        first = await transfer(conn, key=f"retry-{alice}", kind="payment", postings=postings)
    async with engine.begin() as conn:
        again = await transfer(conn, key=f"retry-{alice}", kind="payment", postings=postings)
        assert again.transfer_id == first.transfer_id and not again.created
        assert (await get_account(conn, alice)).balance_cents == 9_000


async def test_same_key_with_different_amount_is_a_conflict(engine, accounts):
    _, alice, bob = accounts
    async with engine.begin() as conn:
        await transfer(conn, key=f"conflict-{alice}", kind="payment",
                       postings=[Posting(alice, -100), Posting(bob, 100)])
    with pytest.raises(IdempotencyConflict):
        async with engine.begin() as conn:
            await transfer(conn, key=f"conflict-{alice}", kind="payment",
                           postings=[Posting(alice, -200), Posting(bob, 200)])


async def test_overdraft_is_refused_and_changes_nothing(engine, accounts):
    _, alice, bob = accounts
    with pytest.raises(InsufficientFunds) as refused:
        async with engine.begin() as conn:
            await transfer(conn, key=f"overdraw-{alice}", kind="payment",
                           postings=[Posting(alice, -10_001), Posting(bob, 10_001)])
    assert refused.value.details == {"account_id": alice, "available_cents": 10_000}
    async with engine.connect() as conn:
        assert (await get_account(conn, alice)).balance_cents == 10_000
        assert await conn.scalar(text("SELECT count(*) FROM transfers WHERE key = :k"),
                                 {"k": f"overdraw-{alice}"}) == 0


@pytest.mark.parametrize(
    ("postings", "error"),
    [
        (lambda a, b: [Posting(a, -100), Posting(b, 99)], UnbalancedTransfer),
        (lambda a, b: [Posting(a, -100)], InvalidTransfer),
        (lambda a, b: [Posting(a, 0), Posting(b, 0)], InvalidTransfer),
        (lambda a, b: [Posting(a, -100), Posting(a, 100)], InvalidTransfer),
        (lambda a, b: [Posting(a, -100), Posting(999_999_999, 100)], AccountNotFound),
    ],
    ids=["unbalanced", "one_posting", "zero_amount", "same_account_twice", "unknown_account"],
)
async def test_malformed_transfers_are_refused_with_their_code(engine, accounts, postings, error):
    _, alice, bob = accounts
    with pytest.raises(error):
        async with engine.begin() as conn:
            await transfer(conn, key=f"bad-{error.code}-{alice}", kind="payment", postings=postings(alice, bob))


async def test_postings_must_balance_per_unit_not_only_in_total(engine, accounts):
    _, alice, _ = accounts
    async with engine.begin() as conn:
        euro_float = await open_account(conn, kind=AccountKind.ISSUER_FLOAT, unit="EUR")
    with pytest.raises(UnbalancedTransfer):
        async with engine.begin() as conn:
            await transfer(conn, key=f"cross-unit-{alice}", kind="payment",
                           postings=[Posting(alice, -100), Posting(euro_float, 100)])


async def test_a_hold_reserves_funds_until_posted_in_part(engine, accounts):
    _, alice, bob = accounts
    expires = datetime.now(timezone.utc) + timedelta(minutes=5)
    async with engine.begin() as conn:
        held = await hold(conn, key=f"hold-{alice}", kind="payment",
                          postings=[Posting(alice, -6_000), Posting(bob, 6_000)], expires_at=expires)
        assert (await balance(conn, alice)).available_cents == 4_000
    with pytest.raises(InsufficientFunds):
        async with engine.begin() as conn:
            await transfer(conn, key=f"over-hold-{alice}", kind="payment",
                           postings=[Posting(alice, -4_001), Posting(bob, 4_001)])
    async with engine.begin() as conn:
        await post_hold(conn, key=f"post-{alice}", hold_id=held.transfer_id, amount_cents=2_000)
        now = await balance(conn, alice)
        assert (now.balance_cents, now.available_cents) == (8_000, 8_000)
    with pytest.raises(HoldNotPending):
        async with engine.begin() as conn:
            await void_hold(conn, key=f"void-after-post-{alice}", hold_id=held.transfer_id)


async def test_a_voided_hold_cannot_be_posted(engine, accounts):
    _, alice, bob = accounts
    expires = datetime.now(timezone.utc) + timedelta(minutes=5)
    async with engine.begin() as conn:
        held = await hold(conn, key=f"hold-v-{alice}", kind="payment",
                          postings=[Posting(alice, -500), Posting(bob, 500)], expires_at=expires)
        await void_hold(conn, key=f"void-{alice}", hold_id=held.transfer_id)
        assert (await balance(conn, alice)).available_cents == 10_000
    with pytest.raises(HoldNotPending):
        async with engine.begin() as conn:
            await post_hold(conn, key=f"post-voided-{alice}", hold_id=held.transfer_id)


async def test_an_expired_hold_cannot_be_posted_and_posting_more_than_held_is_refused(engine, accounts):
    _, alice, bob = accounts
    async with engine.begin() as conn:
        soon = await conn.scalar(text("SELECT now() + interval '50 milliseconds'"))
        short = await hold(conn, key=f"hold-short-{alice}", kind="payment",
                           postings=[Posting(alice, -500), Posting(bob, 500)], expires_at=soon)
        long = await hold(conn, key=f"hold-long-{alice}", kind="payment",
                          postings=[Posting(alice, -500), Posting(bob, 500)],
                          expires_at=datetime.now(timezone.utc) + timedelta(hours=1))
    with pytest.raises(AmountExceedsHold):
        async with engine.begin() as conn:
            await post_hold(conn, key=f"post-too-much-{alice}", hold_id=long.transfer_id, amount_cents=501)
    async with engine.connect() as conn:
        await conn.execute(text("SELECT pg_sleep(0.1)"))
    with pytest.raises(HoldExpired):
        async with engine.begin() as conn:
            await post_hold(conn, key=f"post-expired-{alice}", hold_id=short.transfer_id)


async def test_reversal_restores_balances_and_reversing_twice_is_refused(engine, accounts):
    _, alice, bob = accounts
    async with engine.begin() as conn:
        paid = await transfer(conn, key=f"to-reverse-{alice}", kind="payment",
                              postings=[Posting(alice, -3_000), Posting(bob, 3_000)])
        undo = await reverse(conn, key=f"reverse-{alice}", transfer_id=paid.transfer_id)
        assert (await get_account(conn, alice)).balance_cents == 10_000
        reversal = await get_transfer(conn, undo.transfer_id)
        assert reversal.reverses_id == paid.transfer_id
        assert sorted(p.amount_cents for p in reversal.postings) == [-3_000, 3_000]
    with pytest.raises(AlreadyReversed):
        async with engine.begin() as conn:
            await reverse(conn, key=f"reverse-again-{alice}", transfer_id=paid.transfer_id)
    with pytest.raises(NotReversible):
        async with engine.begin() as conn:
            await reverse(conn, key=f"reverse-nothing-{alice}", transfer_id=987_654_321)


async def test_balance_as_of_a_past_time(engine, accounts):
    _, alice, bob = accounts
    async with engine.begin() as conn:
        before = await conn.scalar(text("SELECT now()"))
    async with engine.begin() as conn:
        await transfer(conn, key=f"later-{alice}", kind="payment",
                       postings=[Posting(alice, -1_234), Posting(bob, 1_234)])
    async with engine.connect() as conn:
        assert (await balance(conn, alice, as_of=before)).balance_cents == 10_000
        assert (await balance(conn, alice)).balance_cents == 8_766


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE transfers SET kind = 'tampered'",
        "DELETE FROM transfers",
        "TRUNCATE transfers CASCADE",
        "UPDATE postings SET amount_cents = amount_cents * 2",
        "DELETE FROM postings",
        "TRUNCATE postings",
    ],
)
async def test_the_database_refuses_to_change_ledger_records(engine, accounts, statement):
    with pytest.raises(DBAPIError, match="append-only"):
        async with engine.begin() as conn:
            await conn.execute(text(statement))


async def test_check_catches_a_posting_changed_behind_the_ledgers_back(engine, accounts):
    _, alice, _ = accounts
    async with engine.connect() as conn:
        assert (await check_ledger(conn)).ok
    async with engine.begin() as conn:
        await conn.execute(text("ALTER TABLE postings DISABLE TRIGGER USER"))
        await conn.execute(text(
            "UPDATE postings SET amount_cents = amount_cents + 1 WHERE account_id = :a "
            "AND transfer_id = (SELECT min(transfer_id) FROM postings WHERE account_id = :a)"), {"a": alice})
        await conn.execute(text("ALTER TABLE postings ENABLE TRIGGER USER"))
    async with engine.connect() as conn:
        report = await check_ledger(conn)
    checks = {d.check for d in report.discrepancies}
    assert {"transfer_balanced", "account_balance"} <= checks
    # Put it back so later tests in this module start from a consistent ledger.
    async with engine.begin() as conn:
        await conn.execute(text("ALTER TABLE postings DISABLE TRIGGER USER"))
        await conn.execute(text(
            "UPDATE postings SET amount_cents = amount_cents - 1 WHERE account_id = :a "
            "AND transfer_id = (SELECT min(transfer_id) FROM postings WHERE account_id = :a)"), {"a": alice})
        await conn.execute(text("ALTER TABLE postings ENABLE TRIGGER USER"))
        assert (await check_ledger(conn)).ok


async def test_the_sweeper_expires_a_hold_at_its_deadline_and_releases_the_funds(engine, accounts):
    from ledger.transfers import expire_due_holds

    _, alice, bob = accounts
    async with engine.begin() as conn:
        soon = await conn.scalar(text("SELECT now() + interval '50 milliseconds'"))
        held = await hold(conn, key=f"hold-sweep-{alice}", kind="payment",
                          postings=[Posting(alice, -700), Posting(bob, 700)], expires_at=soon)
        assert (await balance(conn, alice)).available_cents == 9_300
    async with engine.connect() as conn:
        await conn.execute(text("SELECT pg_sleep(0.1)"))
    async with engine.begin() as conn:
        assert held.transfer_id in await expire_due_holds(conn)
        assert (await balance(conn, alice)).available_cents == 10_000
        assert held.transfer_id not in await expire_due_holds(conn)
    with pytest.raises(HoldNotPending):
        async with engine.begin() as conn:
            await post_hold(conn, key=f"post-swept-{alice}", hold_id=held.transfer_id)
