"""Audit chain cost and verification speed.

1. Ledger transfers/s at 32 clients (median of 6 alternating rounds on one database) with the
   chain on (every transfer row records its actor and transaction, and the sealer chains them
   alongside in the writers' event loop, as in `circuit serve`'s workers) and off (transfers
   record neither, so nothing is chained). Target: >= 80 % retained.
2. Offline verification speed (records/s) of a 1,000,000-record archive written in the real
   format (docs/audit-format.md) with the real hashing, Merkle and signing code.
   Target: >= 200,000 records/s.

Run: python bench/audit.py [--seconds 5] [--records 1000000]
Last line: {"bench": "audit", "chained_per_s": ..., "unchained_per_s": ..., "retained": ...,
            "records": ..., "verify_records_per_s": ...}
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
import warnings
import zipfile
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
warnings.filterwarnings("ignore")

from sqlalchemy import text  # noqa: E402
from sqlalchemy.ext.asyncio import AsyncEngine  # noqa: E402

from audit.archive import FORMAT, pack, verify_archive  # noqa: E402
from audit.canonical import GENESIS_HASH, canonical, record_hash, record_line  # noqa: E402
from audit.chain import checkpoint_statement, run_sealer, seal_all  # noqa: E402
from audit.live import verify_database  # noqa: E402
from audit.keys import CHECKPOINT_DOMAIN, generate  # noqa: E402
from audit.merkle import Frontier, leaf_hash  # noqa: E402
from ledger.accounts import AccountKind, ensure_unit, open_account  # noqa: E402
from ledger.database import create_engine, embedded_url, ensure_database, migrate  # noqa: E402
from ledger.transfers import Posting, transfer  # noqa: E402

CLIENTS = 32
ROUNDS = 6
KEY = generate()
# What a ledger write does for the audit chain (migration 0002b): it records the transfer's
# actor and transaction, and so enters the partial index the sealer finds it by. Without the
# two defaults a transfer does neither, and the sealer never sees it: the chain is off.
AUDITED_COLUMNS = ("actor", "audit_xid")


async def prepare(url: str) -> tuple[AsyncEngine, list[tuple[int, int]], dict[str, str]]:
    """One database for both settings: two databases on one server differed by up to ±20 % in
    the server's CPU time per transfer for the same work, a bias alternating rounds on one
    database removes. Returns the defaults that turn the chain on."""
    await ensure_database(url)
    engine = create_engine(url, pool_size=CLIENTS + 4, max_overflow=0)
    await migrate(engine)
    async with engine.begin() as conn:
        await ensure_unit(conn, "BUL", "Bulle")
        pairs = [(await open_account(conn, kind=AccountKind.ISSUER_FLOAT, unit="BUL"),
                  await open_account(conn, kind=AccountKind.WALLET, unit="BUL")) for _ in range(CLIENTS)]
        defaults = dict((await conn.execute(text(
            "SELECT a.attname, pg_get_expr(d.adbin, d.adrelid) FROM pg_attrdef d "
            "JOIN pg_attribute a ON a.attrelid = d.adrelid AND a.attnum = d.adnum "
            "WHERE d.adrelid = 'transfers'::regclass AND a.attname = ANY(:names)"), {"names": list(AUDITED_COLUMNS)})).all())
    assert set(defaults) == set(AUDITED_COLUMNS), defaults
    return engine, pairs, defaults


async def set_chain(engine: AsyncEngine, defaults: dict[str, str], on: bool) -> None:
    async with engine.begin() as conn:
        for column, default in defaults.items():
            change = f"SET DEFAULT {default}" if on else "DROP DEFAULT"
            await conn.execute(text(f"ALTER TABLE transfers ALTER COLUMN {column} {change}"))


async def transfers_per_second(engine: AsyncEngine, pairs: list[tuple[int, int]], seconds: float, chained: bool,
                               round_: int) -> float:
    deadline = time.perf_counter() + seconds
    counts = [0] * CLIENTS

    async def client(index: int) -> None:
        source, target = pairs[index]
        while time.perf_counter() < deadline:
            async with engine.begin() as conn:
                await transfer(conn, key=f"b-{chained:d}-{round_}-{index}-{counts[index]}", kind="payment",
                               postings=[Posting(source, -1), Posting(target, 1)])
            counts[index] += 1

    started = time.perf_counter()
    await asyncio.gather(*(client(i) for i in range(CLIENTS)))
    rate = sum(counts) / (time.perf_counter() - started)
    if chained:
        # The chain kept pace: what is left to seal when the writers stop is about one pass.
        async with engine.connect() as conn:
            backlog = await conn.scalar(text("SELECT count(*) FROM audit_pending"))
        print(f"  round {round_ + 1}: chained {rate:.0f}/s, {backlog} events waiting for the sealer as the writers "
              f"stopped ({backlog / rate * 1000:.0f} ms of writes)", flush=True)
        assert backlog < rate, "the sealer fell more than a second behind the writers"
    else:
        print(f"  round {round_ + 1}: unchained {rate:.0f}/s", flush=True)
    return rate


async def chain_cost(seconds: float) -> tuple[float, float]:
    """Median rates with the chain on and off, in alternating rounds on one database so that a
    change in the machine's load hits both alike."""
    engine, pairs, defaults = await prepare(embedded_url("audit_cost"))
    # As `circuit serve` runs it: in the event loop of the processes that write, for the whole run
    # (it finds nothing to seal while the chain is off).
    stop = asyncio.Event()
    sealer = asyncio.create_task(run_sealer(engine, KEY, stop))
    rates: dict[bool, list[float]] = {True: [], False: []}
    try:
        for round_ in range(ROUNDS):
            # Off first in one round, on first in the next: whichever went second in a round
            # ran faster in runs of one fixed order, a bias this ordering cancels.
            for chained in (False, True) if round_ % 2 == 0 else (True, False):
                await set_chain(engine, defaults, chained)
                rates[chained].append(await transfers_per_second(engine, pairs, seconds / ROUNDS, chained, round_))
    finally:
        stop.set()
        await sealer
    # Nothing was left out: once the rest is sealed, the chain verifies and holds each transfer
    # of the chained rounds exactly once (those of the other rounds were never audited).
    await seal_all(engine, KEY)
    async with engine.connect() as conn:
        report = await verify_database(conn, [KEY.public_bytes])
        audited = await conn.scalar(text("SELECT count(*) FROM transfers WHERE audit_xid IS NOT NULL"))
        chained = await conn.scalar(text("SELECT count(*) FROM audit_records WHERE event_type = 'ledger.transfer'"))
    assert report.chain.ok, report.chain.problem
    assert chained == audited > 0 and report.transfers - audited > 0, (chained, audited, report.transfers)
    await engine.dispose()
    return statistics.median(rates[True]), statistics.median(rates[False])


def write_archive(path: Path, records: int) -> None:
    """A one-day chain of ledger-transfer records with a checkpoint every 1,000 records."""
    key = generate()
    frontier, previous = Frontier(), GENESIS_HASH
    lines, checkpoints = [], []
    for seq in range(1, records + 1):
        payload = {"effective_at": "2026-11-24T10:00:00.000000Z", "expires_at": None, "key": f"k-{seq}",
                   "kind": "payment", "metadata": {}, "pending_id": None, "phase": "posted",
                   "postings": [[2 * seq, "BUL", -100 - seq % 7], [2 * seq + 1, "BUL", 100 + seq % 7]],
                   "reverses_id": None, "transfer_id": seq}
        ts = f"2026-11-24T10:{seq // 60_000 % 60:02d}:{seq // 1000 % 60:02d}.{seq % 1_000_000:06d}Z"
        body = canonical({"v": 1, "alg": "sha256-jcs-v1", "chain": "circuit", "seq": seq, "ts": ts,
                          "event_at": ts, "event_type": "ledger.transfer", "actor": "user:1", "payload": payload})
        digest = record_hash(previous, body)
        lines.append(record_line(body, digest, previous) + b"\n")
        frontier.append(leaf_hash(digest))
        previous = digest
        if seq % 1000 == 0 or seq == records:
            statement = checkpoint_statement(seq, frontier.root(), digest, datetime(2026, 11, 24, 11, tzinfo=timezone.utc), key.key_id)
            checkpoints.append(canonical({"size": seq, "statement": statement.decode(), "key_id": key.key_id,
                                          "signature": key.sign(CHECKPOINT_DOMAIN, statement).hex()}) + b"\n")
    files = {"records.jsonl": b"".join(lines), "checkpoints.jsonl": b"".join(checkpoints),
             "keys.json": canonical({"keys": [{"key_id": key.key_id, "algorithm": "ed25519",
                                               "public_key": key.public_bytes.hex(), "introduced_seq": 1}]})}
    pack(path, files, {"format": FORMAT, "chain": "circuit", "from": "2026-11-24", "to": "2026-11-24",
                       "first_seq": 1, "last_seq": records, "records": records, "previous": GENESIS_HASH.hex(),
                       "head": previous.hex(), "frontier_size": 0, "frontier": [],
                       "created_at": "2026-11-24T11:00:00.000000Z"}, key, compression=zipfile.ZIP_STORED)


async def main(seconds: float, records: int) -> dict:
    directory = Path(tempfile.mkdtemp(prefix="circuit-bench-audit-"))
    os.environ["CIRCUIT_DATA_DIR"] = str(directory)
    try:
        chained, unchained = await chain_cost(seconds)
        print(f"{CLIENTS} clients: chained {chained:.0f}/s, unchained {unchained:.0f}/s, retained {chained / unchained:.2f}",
              flush=True)
        archive = directory / "archive.zip"
        started = time.perf_counter()
        write_archive(archive, records)
        print(f"wrote a {records:,}-record archive in {time.perf_counter() - started:.1f} s "
              f"({archive.stat().st_size / 1e6:.0f} MB)", flush=True)
        started = time.perf_counter()
        report = verify_archive(archive)
        elapsed = time.perf_counter() - started
        assert report.ok and report.records == records, report.problem
        print(f"verified {records:,} records in {elapsed:.2f} s", flush=True)
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    return {"bench": "audit", "chained_per_s": round(chained), "unchained_per_s": round(unchained),
            "retained": round(chained / unchained, 3), "records": records,
            "verify_records_per_s": round(records / elapsed)}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--records", type=int, default=1_000_000)
    args = parser.parse_args()
    print(json.dumps(asyncio.run(main(args.seconds, args.records))))
