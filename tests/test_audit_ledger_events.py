"""Ledger writes are chained from the transfer rows themselves (migration 0002b): each
transfer exactly once, whole transactions at a time, never before every older writing
transaction has ended, with the payload the ledger's audit hook used to write."""

from __future__ import annotations

import asyncio
import json
import random
import re
from datetime import datetime, timedelta
from pathlib import Path

from sqlalchemy import text

from audit import chain
from audit.chain import append, seal, seal_all, set_actor
from audit.keys import generate
from audit.live import verify_database
from ledger.accounts import AccountKind, ensure_unit, open_account
from ledger.transfers import Posting, hold, post_hold, reverse, transfer, void_hold

KEY = generate()
FOUNDATION = Path(__file__).resolve().parent.parent / "migrations" / "versions" / "0001_foundation.py"


async def _accounts(engine, n: int = 2) -> list[int]:
    async with engine.begin() as conn:
        await ensure_unit(conn, "BUL", "Bulle")
        ids = [await open_account(conn, kind=AccountKind.ISSUER_FLOAT, unit="BUL")]
        ids += [await open_account(conn, kind=AccountKind.WALLET, unit="BUL") for _ in range(n - 1)]
    return ids


async def _pay(conn, key: str, source: int, target: int, amount: int = 100) -> int:
    return (await transfer(conn, key=key, kind="payment",
                           postings=[Posting(source, -amount), Posting(target, amount)])).transfer_id


async def _chained(engine) -> list[dict]:
    async with engine.connect() as conn:
        bodies = (await conn.execute(text("SELECT body FROM audit_records ORDER BY seq"))).scalars().all()
    return [json.loads(bytes(b)) for b in bodies]


def _ledger_keys(bodies: list[dict]) -> list[str]:
    return [b["payload"]["key"] for b in bodies if b["event_type"].startswith("ledger.")]


async def _seal(engine, **kwargs) -> chain.SealResult:
    async with engine.begin() as conn:
        return await seal(conn, KEY, **kwargs)


async def test_the_events_are_those_the_ledgers_audit_hook_wrote_before(engine):
    """Every kind of ledger write, with the old hook (0001's ledger_audit, which wrote to the
    inbox) put back for one transaction: the events read from the transfers are the same."""
    old_hook = re.search(r"CREATE FUNCTION ledger_audit\(.*?\n\$\$;", FOUNDATION.read_text(), re.S).group(0)
    source, target, other = await _accounts(engine, 3)
    async with engine.connect() as conn:
        await conn.begin()
        await conn.execute(text(old_hook.replace("CREATE FUNCTION", "CREATE OR REPLACE FUNCTION")))
        await set_actor(conn, "user:42")
        until = datetime.now().astimezone() + timedelta(hours=1)
        paid = await _pay(conn, "same-1", source, target, 500)
        await reverse(conn, key="same-2", transfer_id=paid)
        held = (await hold(conn, key="same-3", kind="payment", expires_at=until, metadata={"note": "été"},
                           postings=[Posting(source, -300), Posting(other, 300)])).transfer_id
        await post_hold(conn, key="same-4", hold_id=held, amount_cents=200)
        voided = (await hold(conn, key="same-5", kind="payment", expires_at=until,
                             postings=[Posting(source, -50), Posting(target, 50)])).transfer_id
        await void_hold(conn, key="same-6", hold_id=voided)
        written = (await conn.execute(text(
            "SELECT event_type, actor, payload::text AS payload FROM audit_inbox "
            "WHERE xid = pg_current_xact_id()::text::bigint ORDER BY id"))).all()
        derived = (await conn.execute(text(
            "SELECT event_type, actor, payload::text AS payload FROM audit_pending "
            "WHERE source = 'ledger' AND xid = pg_current_xact_id()::text::bigint ORDER BY id"))).all()
        await conn.rollback()
    assert [r.event_type for r in derived] == ["ledger.transfer", "ledger.reversal", "ledger.hold",
                                               "ledger.hold_posted", "ledger.hold", "ledger.hold_voided"]
    assert [tuple(r) for r in derived] == [tuple(r) for r in written]
    assert {r.actor for r in derived} == {"user:42"}


async def test_a_transfer_waits_for_every_older_writing_transaction_then_is_chained_once(engine):
    (source, target), (other_source, other_target) = await _accounts(engine), await _accounts(engine)
    older = await engine.connect()
    await older.begin()
    await _pay(older, "older-open", source, target)  # begins writing first, commits last
    async with engine.begin() as conn:
        await _pay(conn, "younger-committed", other_source, other_target)

    await _seal(engine)
    assert "younger-committed" not in _ledger_keys(await _chained(engine))
    async with engine.connect() as conn:
        waiting = (await conn.execute(text("SELECT payload->>'key' FROM audit_pending WHERE source = 'ledger'"))).scalars().all()
    assert "younger-committed" in waiting

    await older.commit()
    await older.close()
    await _seal(engine)
    await _seal(engine)
    keys = _ledger_keys(await _chained(engine))
    assert keys[-2:] == ["older-open", "younger-committed"] and len(keys) == len(set(keys))
    async with engine.connect() as conn:
        report = await verify_database(conn, [KEY.public_bytes])
    assert report.ok, report.problems or report.chain.problem
    assert report.pending_events == 0


async def test_a_rolled_back_transaction_holds_the_chain_only_until_it_ends_and_leaves_nothing(engine):
    (source, target), (other_source, other_target) = await _accounts(engine), await _accounts(engine)
    doomed = await engine.connect()
    await doomed.begin()
    await _pay(doomed, "rolled-back", source, target)
    await append(doomed, event_type="voucher.revoked", payload={"voucher_id": 9})
    async with engine.begin() as conn:
        await _pay(conn, "after-the-doomed-one", other_source, other_target)
    await _seal(engine)
    assert "after-the-doomed-one" not in _ledger_keys(await _chained(engine))
    await doomed.rollback()
    await doomed.close()
    await _seal(engine)
    bodies = await _chained(engine)
    assert "after-the-doomed-one" in _ledger_keys(bodies) and "rolled-back" not in _ledger_keys(bodies)
    assert not [b for b in bodies if b["event_type"] == "voucher.revoked"]


async def test_a_pass_takes_whole_transactions_and_the_next_pass_the_rest(engine, monkeypatch):
    source, target = await _accounts(engine)
    await seal_all(engine, KEY)
    monkeypatch.setattr(chain, "SEAL_BATCH_MAX", 4)
    for name, size in (("a", 3), ("b", 6), ("c", 1), ("d", 2)):
        async with engine.begin() as conn:
            for i in range(size):
                await _pay(conn, f"batch-{name}-{i}", source, target)
                await append(conn, event_type="voucher.revoked", payload={"tx": name, "i": i})
    before = len(await _chained(engine))
    passes = [await _seal(engine) for _ in range(5)]
    # a (3 + 3 events) is past the limit of 4: taken whole; so is b; c and d together would be.
    assert [p.sealed for p in passes] == [6, 12, 2, 4, 0]
    assert [p.more for p in passes] == [True, True, True, False, False]
    added = (await _chained(engine))[before:]
    order = [b["payload"]["key"][6] if b["event_type"].startswith("ledger.") else b["payload"]["tx"] for b in added
             if b["event_type"] != "audit.closure"]
    assert order == ["a"] * 6 + ["b"] * 12 + ["c"] * 2 + ["d"] * 4
    # Within a transaction, its transfers in order, then its other events in the order written.
    b_events = [b for b in added if b["event_type"] != "audit.closure"][6:18]
    assert [b["event_type"] for b in b_events] == ["ledger.transfer"] * 6 + ["voucher.revoked"] * 6
    assert [b["payload"]["i"] for b in b_events[6:]] == list(range(6))


async def test_an_event_appended_and_sealed_in_one_transaction_is_chained_by_that_seal(engine):
    async with engine.begin() as conn:
        await append(conn, event_type="voucher.revoked", payload={"voucher_id": 77})
        result = await seal(conn, KEY)
        last = json.loads(bytes((await conn.execute(
            text("SELECT body FROM audit_records ORDER BY seq DESC LIMIT 1"))).scalar_one()))
    assert result.sealed >= 1 and last["payload"] == {"voucher_id": 77}


async def test_an_inbox_event_from_before_transactions_were_recorded_is_still_chained(engine):
    async with engine.begin() as conn:
        await conn.execute(text("INSERT INTO audit_inbox (event_type, actor, payload, xid) "
                                "VALUES ('voucher.revoked', 'system', '{\"legacy\": true}', NULL)"))
    await seal_all(engine, KEY)
    assert any(b["payload"] == {"legacy": True} for b in await _chained(engine))
    async with engine.connect() as conn:
        assert await conn.scalar(text("SELECT count(*) FROM audit_inbox")) == 0


async def test_writers_racing_a_sealer_leave_every_transfer_chained_exactly_once(engine):
    """Transactions of random sizes, some lingering open, some rolled back, while a sealer
    runs pass after pass: afterwards the chain and the ledger agree one to one."""
    accounts = await _accounts(engine, 9)
    rng = random.Random(7)
    done = asyncio.Event()
    committed: list[str] = []

    async def writer(w: int) -> None:
        for n in range(12):
            keys = [f"race-{w}-{n}-{i}" for i in range(rng.randint(1, 3))]
            async with engine.connect() as conn:
                await conn.begin()
                for key in keys:
                    await _pay(conn, key, accounts[0], accounts[1 + w % 8], rng.randint(1, 50))
                await asyncio.sleep(rng.random() * 0.02)
                if rng.random() < 0.2:
                    await conn.rollback()
                else:
                    await conn.commit()
                    committed.extend(keys)

    async def sealer() -> None:
        while not done.is_set():
            await _seal(engine)
            await asyncio.sleep(0.003)

    running = asyncio.create_task(sealer())
    await asyncio.gather(*(writer(w) for w in range(8)))
    done.set()
    await running
    await seal_all(engine, KEY)
    keys = _ledger_keys(await _chained(engine))
    race = [k for k in keys if k.startswith("race-")]
    assert sorted(race) == sorted(committed) and len(race) == len(set(race))
    async with engine.connect() as conn:
        report = await verify_database(conn, [KEY.public_bytes])
    assert report.ok, report.problems or report.chain.problem


async def test_verifying_the_database_reads_chain_pending_events_and_ledger_in_one_snapshot(engine):
    await seal_all(engine, KEY)
    async with engine.connect() as conn:
        report = await verify_database(conn, [KEY.public_bytes])
        assert await conn.scalar(text("SHOW transaction_isolation")) == "repeatable read"
        assert await conn.scalar(text("SHOW transaction_read_only")) == "on"
    assert report.ok, report.problems or report.chain.problem
