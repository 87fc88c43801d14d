"""Wallets: a town campaign opening 5,800 funded wallets from a CSV, and rotating-QR payments
taken by shops per second.

The campaign is what a vaccination campaign did at once (5,800 accounts, about 50 € each):
parse and check the CSV, one set-based insert of accounts and wallets, one ledger transfer.
Payments: ``--clients`` shops each take payments from their own stream of residents (each code
is single-use, so each payment is a different wallet's current code), one per transaction.

Run: python bench/wallets.py [--rows 5800] [--rounds 3] [--seconds 5] [--clients 8]
Last line: {"bench": "wallets", "campaign_rows": 5800, "campaign_s": ..., "code_payments_per_s": ..., ...}
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
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
warnings.filterwarnings("ignore")

from sqlalchemy import text  # noqa: E402

from ledger.accounts import ensure_unit  # noqa: E402
from ledger.check import check_ledger  # noqa: E402
from ledger.database import create_engine, embedded_url, ensure_database, migrate  # noqa: E402
from ledger.rotating_codes import code_for, step_of  # noqa: E402
from ledger.scheme import create_issuer, create_merchant, create_programme  # noqa: E402
from ledger.wallets import open_campaign, parse_campaign_csv, take_code_payment  # noqa: E402


def campaign_csv(tag: str, rows: int) -> str:
    lines = ["name,email,phone,amount"]
    lines += [f"Agent {i},agent{i}.{tag}@vaccination.example,,{45 + i % 11}" for i in range(rows)]
    return "\n".join(lines) + "\n"


async def main(rows: int, rounds: int, seconds: float, clients: int) -> dict:
    directory = Path(tempfile.mkdtemp(prefix="wallets-bench-"))
    os.environ["CIRCUIT_DATA_DIR"] = str(directory)
    try:
        url = embedded_url()
        await ensure_database(url)
        engine = create_engine(url, pool_size=clients + 2, max_overflow=0)
        await migrate(engine)
        async with engine.begin() as conn:
            await ensure_unit(conn, "BUL", "Bulle")
            issuer = await create_issuer(conn, name="Bench town")
            programme = await create_programme(conn, issuer_id=issuer, kind="local_currency", name="Bulle", unit="BUL")
            shops = []
            for index in range(clients):
                shop, _ = await create_merchant(conn, issuer_id=issuer, legal_name=f"Shop {index}",
                                                trade_name=f"Shop {index}", units=["BUL"])
                await conn.execute(text("INSERT INTO merchant_programmes (merchant_id, programme_id, status) "
                                        "VALUES (:m, :p, 'approved')"), {"m": shop, "p": programme.id})
                shops.append(shop)

        timings = []
        campaign_ids = []
        for round_index in range(rounds):
            data = campaign_csv(f"r{round_index}", rows)
            started = time.perf_counter()
            parsed = parse_campaign_csv(data)
            async with engine.begin() as conn:
                result = await open_campaign(conn, key=f"bench-{round_index}", programme_id=programme.id,
                                             name="Vaccination", rows=parsed)
            timings.append(time.perf_counter() - started)
            campaign_ids.append(result.campaign_id)
            print(f"campaign of {rows} wallets: {timings[-1]:.3f} s (total {result.total_cents / 100:.2f})", flush=True)

        async with engine.connect() as conn:
            wallets = (await conn.execute(text(
                "SELECT id, totp_secret FROM wallets WHERE campaign_id = ANY(:c) ORDER BY id"),
                {"c": campaign_ids})).all()
        queues = [wallets[i::clients] for i in range(clients)]
        deadline = time.perf_counter() + seconds
        counts = [0] * clients

        async def shop_client(index: int) -> None:
            for wallet_id, secret in queues[index]:
                if time.perf_counter() >= deadline:
                    return
                code = code_for(wallet_id, secret, step=step_of(time.time()))
                async with engine.begin() as conn:
                    await take_code_payment(conn, key=f"sale-{wallet_id}", merchant_id=shops[index], code=code,
                                            amount_cents=350)
                counts[index] += 1

        started = time.perf_counter()
        await asyncio.gather(*(shop_client(i) for i in range(clients)))
        elapsed = time.perf_counter() - started
        payments_per_s = sum(counts) / elapsed
        print(f"{clients} shops: {payments_per_s:.0f} rotating-QR payments/s ({sum(counts)} in {elapsed:.1f} s)",
              flush=True)
        async with engine.connect() as conn:
            report = await check_ledger(conn)
        await engine.dispose()
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    return {"bench": "wallets", "campaign_rows": rows, "campaign_s": round(statistics.median(timings), 3),
            "campaign_s_rounds": [round(t, 3) for t in timings], "code_payments_per_s": round(payments_per_s),
            "clients": clients, "payments": sum(counts), "ledger_check_ok": report.ok}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=5800)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--clients", type=int, default=8)
    args = parser.parse_args()
    print(json.dumps(asyncio.run(main(args.rows, args.rounds, args.seconds, args.clients))))
