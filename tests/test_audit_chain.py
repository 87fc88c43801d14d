"""The audit chain on real PostgreSQL: every ledger write is chained in its own transaction,
sealed into a signed chain, closed per day/month/year, exported, and any tampering behind
the application's back is found at the right record."""

from __future__ import annotations

import json
from datetime import date, datetime, timedelta, timezone

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from audit.archive import export_archive, verify_archive
from audit import verify_parallel
from audit.chain import append, rotate_key, seal
from audit.keys import generate
from audit.live import consistency, record_with_proof, verify_database
from audit.merkle import leaf_hash, verify_consistency, verify_inclusion
from ledger.accounts import AccountKind, ensure_unit, open_account
from ledger.transfers import Posting, transfer

KEY = generate()


async def _pay(engine, key: str, amount: int = 100) -> int:
    async with engine.begin() as conn:
        await ensure_unit(conn, "BUL", "Bulle")
        source = await open_account(conn, kind=AccountKind.ISSUER_FLOAT, unit="BUL")
        target = await open_account(conn, kind=AccountKind.WALLET, unit="BUL")
        result = await transfer(conn, key=key, kind="payment", postings=[Posting(source, -amount), Posting(target, amount)])
    return result.transfer_id


async def _seal(engine, **kwargs):
    async with engine.begin() as conn:
        return await seal(conn, KEY, **kwargs)


async def _verify(engine):
    async with engine.connect() as conn:
        return await verify_database(conn, pinned=[KEY.public_bytes])


async def test_a_transfer_is_recorded_in_its_own_transaction_and_a_rollback_leaves_no_record(engine):
    await _pay(engine, "audited-1")
    async with engine.connect() as conn:
        inbox = (await conn.execute(text("SELECT event_type, payload FROM audit_pending"))).all()
    assert [row.event_type for row in inbox] == ["ledger.transfer"]
    assert inbox[0].payload["key"] == "audited-1"
    assert sorted(p[2] for p in inbox[0].payload["postings"]) == [-100, 100]

    with pytest.raises(RuntimeError):
        async with engine.begin() as conn:
            await append(conn, event_type="voucher.revoked", payload={"voucher_id": 1})
            raise RuntimeError("the change fails after recording")
    async with engine.connect() as conn:
        assert await conn.scalar(text("SELECT count(*) FROM audit_pending")) == 1


async def test_sealing_chains_events_gaplessly_and_the_chain_verifies_against_the_ledger(engine):
    for i in range(5):
        await _pay(engine, f"chained-{i}")
    result = await _seal(engine, force_checkpoint=True)
    assert result.size >= 7  # the key registration, the earlier payment, these five
    async with engine.connect() as conn:
        seqs = (await conn.execute(text("SELECT seq FROM audit_records ORDER BY seq"))).scalars().all()
        assert seqs == list(range(1, len(seqs) + 1))
        assert await conn.scalar(text("SELECT count(*) FROM audit_pending")) == 0
    report = await _verify(engine)
    assert report.ok, report.problems or report.chain.problem
    assert report.chain.last_checkpoint["size"] == result.size


async def test_an_event_written_by_sql_that_rfc8785_cannot_encode_is_chained_verbatim_not_blocking(engine):
    # Behind append()'s back, SQL can store numbers JSON's doubles cannot hold exactly.
    raw = '{"n": 123456789012345678901234567890}'
    before = (await _seal(engine)).size
    async with engine.begin() as conn:
        await conn.execute(text("SELECT audit_append('voucher.revoked', CAST(:p AS jsonb))"), {"p": raw})
    await _pay(engine, "after-the-odd-one")
    await _seal(engine, force_checkpoint=True)
    async with engine.connect() as conn:
        bodies = [json.loads(bytes(b)) for b in (await conn.execute(text(
            "SELECT body FROM audit_records WHERE seq > :before AND event_type NOT LIKE 'audit.%' ORDER BY seq"),
            {"before": before})).scalars()]
    assert [b["event_type"] for b in bodies] == ["voucher.revoked", "ledger.transfer"]
    assert json.loads(bodies[0]["payload"]["unencodable_json"]) == json.loads(raw)
    assert bodies[1]["payload"]["key"] == "after-the-odd-one"
    report = await _verify(engine)
    assert report.ok, report.problems or report.chain.problem


async def test_inclusion_and_consistency_proofs_verify(engine):
    await _pay(engine, "proof-1")
    first = (await _seal(engine, force_checkpoint=True)).size
    await _pay(engine, "proof-2")
    second = (await _seal(engine, force_checkpoint=True)).size
    async with engine.connect() as conn:
        proof = await record_with_proof(conn, 3, second)
        link = await consistency(conn, first, second)
        record_hash = bytes.fromhex(json.loads(proof["line"])["hash"])
    assert verify_inclusion(leaf_hash(record_hash), 2, second, [bytes.fromhex(p) for p in proof["inclusion_proof"]],
                            bytes.fromhex(proof["root"]))
    assert verify_consistency(first, second, bytes.fromhex(link["first_root"]), bytes.fromhex(link["second_root"]),
                              [bytes.fromhex(p) for p in link["proof"]])


async def test_audit_tables_refuse_changes(engine):
    await _pay(engine, "unsealed")
    async with engine.begin() as conn:
        await append(conn, event_type="voucher.revoked", payload={"voucher_id": 1})
    for statement in ("UPDATE audit_records SET event_type = 'x'", "DELETE FROM audit_records",
                      "TRUNCATE audit_records", "DELETE FROM audit_checkpoints", "UPDATE audit_inbox SET actor = 'x'",
                      "UPDATE transfers SET actor = 'x'", "UPDATE transfers SET audit_xid = 0"):
        with pytest.raises(DBAPIError, match="append-only"):
            async with engine.begin() as conn:
                await conn.execute(text(statement))
    with pytest.raises(DBAPIError, match="not sealed"):
        async with engine.begin() as conn:
            await conn.execute(text("DELETE FROM audit_inbox"))
    await _seal(engine)


async def test_periods_are_closed_with_totals_and_a_new_key_is_introduced_by_the_old(engine):
    now = datetime.now(timezone.utc)
    await _pay(engine, "before-midnight", amount=2500)
    await _seal(engine, now=now)
    tomorrow = now + timedelta(days=1)
    result = await _seal(engine, now=tomorrow)
    assert result.closures >= 1
    async with engine.connect() as conn:
        bodies = [json.loads(bytes(b)) for b in (await conn.execute(text(
            "SELECT body FROM audit_records WHERE event_type = 'audit.closure' ORDER BY seq"))).scalars()]
    day = [b["payload"] for b in bodies if b["payload"]["kind"] == "day"][-1]
    assert day["totals"]["ledger"]["BUL|payment|-"]["volume_cents"] >= 2500
    assert day["perpetual"]["events"]["ledger.transfer"] >= day["totals"]["events"]["ledger.transfer"]

    new_key = generate()
    async with engine.begin() as conn:
        await rotate_key(conn, KEY, new_key)
    await _pay(engine, "after-rotation")
    async with engine.begin() as conn:
        await seal(conn, new_key, force_checkpoint=True, now=tomorrow + timedelta(seconds=5))
    assert (await _verify(engine)).ok  # old checkpoints by the old key, new ones by the endorsed new key
    globals()["KEY"] = new_key


async def test_an_exported_archive_verifies_offline_and_its_export_is_itself_recorded(engine, tmp_path):
    await _seal(engine, force_checkpoint=True)
    path = tmp_path / "audit.zip"
    async with engine.begin() as conn:
        today = datetime.now(timezone.utc).date()
        await export_archive(conn, KEY, path, date(2000, 1, 1), today + timedelta(days=2))
        assert await conn.scalar(text("SELECT count(*) FROM audit_inbox WHERE event_type = 'audit.exported'")) == 1
    report = verify_archive(path)
    assert report.ok, report.problem
    assert report.first_seq == 1 and report.records == report.last_seq
    assert report.closures and report.last_checkpoint


async def test_an_archive_checked_on_two_processes_gives_the_one_pass_report(engine, tmp_path, monkeypatch):
    path = tmp_path / "audit.zip"
    async with engine.begin() as conn:
        await export_archive(conn, KEY, path, date(2000, 1, 1), datetime.now(timezone.utc).date() + timedelta(days=2))
    one_pass = verify_archive(path, workers=1)

    def no_fallback(*args, **kwargs):
        raise AssertionError("the parallel verifier fell back to one pass on a clean archive")

    monkeypatch.setattr(verify_parallel, "verify_lines", no_fallback)
    parallel = verify_archive(path, workers=2, parallel_min=1)
    assert one_pass.ok and parallel == one_pass
    assert any(c["kind"] == "day" for c in parallel.closures)


# Tampering behind the application's back, as the database superuser with triggers off.

async def _tamper(engine, *statements: str) -> None:
    async with engine.begin() as conn:
        await conn.execute(text("ALTER TABLE audit_records DISABLE TRIGGER USER"))
        for statement in statements:
            await conn.execute(text(statement))
        await conn.execute(text("ALTER TABLE audit_records ENABLE TRIGGER USER"))


@pytest.fixture
async def fresh_chain(server_url, template_database):
    """A chain of its own for each tampering test: 12 payments, sealed and checkpointed."""
    import uuid

    from sqlalchemy.engine import make_url

    from ledger.database import create_engine
    from tests.conftest import _admin

    name = f"circuit_tamper_{uuid.uuid4().hex[:8]}"
    await _admin(server_url, f'CREATE DATABASE "{name}" TEMPLATE "{template_database}"')
    engine = create_engine(make_url(server_url).set(database=name).render_as_string(False))
    for i in range(12):
        await _pay(engine, f"t-{i}")
        if i == 5:
            await _seal(engine, force_checkpoint=True)
    await _seal(engine, force_checkpoint=True)
    yield engine
    await engine.dispose()


async def test_a_changed_byte_in_a_payload_is_found_at_that_record(fresh_chain):
    await _tamper(fresh_chain, "UPDATE audit_records SET body = overlay(body placing '9' from position(convert_to('-100', 'UTF8') in body) + 1 for 1) WHERE seq = 4")
    report = await _verify(fresh_chain)
    assert report.chain.problem.seq == 4 and "content altered" in report.chain.problem.reason


async def test_a_deleted_record_is_found_as_missing(fresh_chain):
    await _tamper(fresh_chain, "DELETE FROM audit_records WHERE seq = 5")
    problem = (await _verify(fresh_chain)).chain.problem
    assert problem.seq == 5 and "missing" in problem.reason


async def test_a_forged_record_slipped_into_the_middle_is_found_where_it_was_inserted(fresh_chain):
    await _tamper(
        fresh_chain,
        "UPDATE audit_records SET seq = seq + 1000001 WHERE seq >= 7",
        "UPDATE audit_records SET seq = seq - 1000000 WHERE seq > 1000000",
        "INSERT INTO audit_records SELECT 7, chain, NULL, ts, event_type, body, prev_hash, hash, algorithm "
        "FROM audit_records WHERE seq = 6",
    )
    problem = (await _verify(fresh_chain)).chain.problem
    assert problem.seq == 7 and "inserted" in problem.reason


async def test_two_swapped_records_are_found_at_the_first(fresh_chain):
    await _tamper(fresh_chain, "UPDATE audit_records SET seq = 1000007 WHERE seq = 7",
                  "UPDATE audit_records SET seq = 7 WHERE seq = 8", "UPDATE audit_records SET seq = 8 WHERE seq = 1000007")
    problem = (await _verify(fresh_chain)).chain.problem
    assert problem.seq == 7


async def test_a_truncated_tail_is_found(fresh_chain):
    await _tamper(fresh_chain, "DELETE FROM audit_records WHERE seq > 10")
    problem = (await _verify(fresh_chain)).chain.problem
    assert problem.seq == 11 and "truncated" in problem.reason


async def test_a_whole_chain_rewritten_with_recomputed_hashes_is_caught_by_the_signatures(fresh_chain):
    from audit.canonical import GENESIS_HASH, record_hash

    async with fresh_chain.begin() as conn:
        rows = (await conn.execute(text("SELECT seq, body FROM audit_records ORDER BY seq"))).all()
        await conn.execute(text("ALTER TABLE audit_records DISABLE TRIGGER USER"))
        previous = GENESIS_HASH
        for row in rows:
            body = bytes(row.body).replace(b'"t-3"', b'"t-X"')
            digest = record_hash(previous, body)
            await conn.execute(text("UPDATE audit_records SET body = :b, prev_hash = :p, hash = :h WHERE seq = :s"),
                               {"b": body, "p": previous, "h": digest, "s": row.seq})
            previous = digest
        await conn.execute(text("ALTER TABLE audit_records ENABLE TRIGGER USER"))
    problem = (await _verify(fresh_chain)).chain.problem
    assert "rewritten" in problem.reason and "signed checkpoint" in problem.reason
