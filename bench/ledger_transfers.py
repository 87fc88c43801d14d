"""Ledger transfers per second at 1, 8 and 32 concurrent clients, against this machine's floor.

The floor is the same transfer as one raw SQL statement (two balance updates and an insert,
no ledger code) through the same engine, pool and transactions; the ratio is what the
ledger's rules (idempotency, per-unit balance, floors under row locks, postings, audit)
cost on top of it. Each client moves value between its own two accounts so the figure is
throughput, not contention on one row (the concurrency test covers contention).

Run: python bench/ledger_transfers.py [--seconds 5]
Last line: {"bench": "ledger_transfers", "clients": 32, "ledger_per_s": ..., "floor_per_s": ..., "ratio": ...}
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
warnings.filterwarnings("ignore")

from sqlalchemy import text  # noqa: E402

from ledger.accounts import AccountKind, ensure_unit, open_account  # noqa: E402
from ledger.database import create_engine, embedded_url, ensure_database, migrate  # noqa: E402
from ledger.transfers import Posting, transfer  # noqa: E402

CLIENT_COUNTS = (1, 8, 32)
FLOOR_SCHEMA = """
CREATE TABLE IF NOT EXISTS floor_accounts (id bigint PRIMARY KEY, balance bigint NOT NULL);
CREATE TABLE IF NOT EXISTS floor_transfers (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, debit_id bigint NOT NULL,
    credit_id bigint NOT NULL, amount bigint NOT NULL, created_at timestamptz NOT NULL DEFAULT now());
"""
FLOOR_TRANSFER = text(
    """
    WITH d AS (UPDATE floor_accounts SET balance = balance - :amount WHERE id = :debit RETURNING id),
         c AS (UPDATE floor_accounts SET balance = balance + :amount WHERE id = :credit RETURNING id)
    INSERT INTO floor_transfers (debit_id, credit_id, amount) SELECT d.id, c.id, :amount FROM d, c
    """
)


async def measure(clients: int, seconds: float, one_transfer) -> float:
    """Transfers per second with ``clients`` tasks each writing one transfer per transaction."""
    deadline = time.perf_counter() + seconds
    counts = [0] * clients

    async def client(index: int) -> None:
        sequence = 0
        while time.perf_counter() < deadline:
            await one_transfer(index, sequence)
            sequence += 1
        counts[index] = sequence

    started = time.perf_counter()
    await asyncio.gather(*(client(i) for i in range(clients)))
    return sum(counts) / (time.perf_counter() - started)


async def main(seconds: float) -> dict:
    directory = Path(tempfile.mkdtemp(prefix="circuit-bench-"))
    os.environ["CIRCUIT_DATA_DIR"] = str(directory)
    try:
        url = embedded_url()
        await ensure_database(url)
        engine = create_engine(url, pool_size=max(CLIENT_COUNTS) + 2, max_overflow=0)
        await migrate(engine)
        pairs: list[tuple[int, int]] = []
        async with engine.begin() as conn:
            await ensure_unit(conn, "BUL", "Bulle")
            for index in range(max(CLIENT_COUNTS)):
                source = await open_account(conn, kind=AccountKind.ISSUER_FLOAT, unit="BUL")
                target = await open_account(conn, kind=AccountKind.WALLET, unit="BUL")
                pairs.append((source, target))
            for statement in FLOOR_SCHEMA.strip().split(";\n"):
                await conn.execute(text(statement))
            await conn.execute(text("INSERT INTO floor_accounts SELECT g, 0 FROM generate_series(1, 64) g"))

        run = {"n": 0}

        async def ledger_transfer(index: int, sequence: int) -> None:
            source, target = pairs[index]
            async with engine.begin() as conn:
                await transfer(conn, key=f"bench-{run['n']}-{index}-{sequence}", kind="payment",
                               postings=[Posting(source, -100), Posting(target, 100)])

        async def floor_transfer(index: int, sequence: int) -> None:
            async with engine.begin() as conn:
                await conn.execute(FLOOR_TRANSFER, {"amount": 100, "debit": 2 * index + 1, "credit": 2 * index + 2})

        results = {}
        for clients in CLIENT_COUNTS:
            run["n"] += 1
            floor = await measure(clients, seconds, floor_transfer)
            ledger = await measure(clients, seconds, ledger_transfer)
            results[clients] = (ledger, floor)
            print(f"{clients:>3} clients: ledger {ledger:8.0f}/s  floor {floor:8.0f}/s  ratio {ledger / floor:.2f}",
                  flush=True)
        await engine.dispose()
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    ledger, floor = results[max(CLIENT_COUNTS)]
    return {"bench": "ledger_transfers", "clients": max(CLIENT_COUNTS), "ledger_per_s": round(ledger),
            "floor_per_s": round(floor), "ratio": round(ledger / floor, 3),
            "by_clients": {str(c): {"ledger_per_s": round(l), "floor_per_s": round(f)} for c, (l, f) in results.items()}}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="measuring time per mode and client count")
    print(json.dumps(asyncio.run(main(parser.parse_args().seconds))))
