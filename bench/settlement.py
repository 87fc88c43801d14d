"""Settlement at scale: 1,000 merchants and 100,000 redemptions in a month.

Seeds an embedded database through the ledger (every redemption is its own balanced transfer
with its ``merchant_takings`` row, written server-side by ``ledger_transfer`` to keep seeding
short), then times ``prepare`` for the month (the target: ≤ 30 s), approval, export (ledger
transfers, invoices, pain.001, CSV) and rendering every merchant's statement (PDF and CSV).

Run: .venv/bin/python bench/settlement.py [--merchants 1000] [--redemptions 100000]
Last line: {"bench": "settlement", "merchants": 1000, "redemptions": 100000, "prepare_s": ..., ...}
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import sys
import tempfile
import time
import warnings
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
warnings.filterwarnings("ignore")

from sqlalchemy import text  # noqa: E402

from api.auth import create_user  # noqa: E402
from ledger.accounts import AccountKind, open_account  # noqa: E402
from ledger.database import create_engine, ensure_database, migrate, start_embedded_server  # noqa: E402
from ledger.scheme import create_issuer, create_programme  # noqa: E402
from ledger.transfers import Posting, transfer  # noqa: E402
from settlement import batches, documents  # noqa: E402
from settlement.fees import create_rule  # noqa: E402

CHUNK = 10_000
MONTH = "2026-10"
MONTH_START = datetime(2026, 9, 30, 22, tzinfo=timezone.utc)  # 1 October 00:00 in Paris
MONTH_SECONDS = 31 * 24 * 3600 - 3600 * 2

# One redemption: a ledger transfer (the merchant's voucher account → the merchant) and its
# taking, for row g of the series; amounts 1.00–80.00 €, spread over the month.
REDEEM = text(
    """
    WITH plan AS (
        SELECT g, v.voucher_id, v.merchant_id, v.account_id,
               100 + (g * 7919) % 7900 AS amount_cents,
               CAST(:start AS timestamptz) + make_interval(secs => (g * 104729) % :seconds) AS effective_at
        FROM generate_series(CAST(:first AS bigint), CAST(:last AS bigint)) g
        JOIN bench_vouchers v ON v.n = g % :merchants
    ), moved AS (
        SELECT p.*, (ledger_transfer('bench-redeem-' || p.g, 'voucher.redeem',
                                     ARRAY[p.voucher_id, p.account_id], ARRAY[-p.amount_cents, p.amount_cents],
                                     NULL, p.effective_at)).transfer_id
        FROM plan p
    )
    INSERT INTO merchant_takings (merchant_id, programme_id, kind, amount_cents, transfer_id, effective_at)
    SELECT merchant_id, :programme, 'redeem', amount_cents, transfer_id, effective_at FROM moved
    """
)


async def seed(engine, merchants: int, redemptions: int) -> dict:
    async with engine.begin() as conn:
        issuer_id = await create_issuer(conn, name="Bench Cœur de Ville", siren="732829320")
        await conn.execute(text("UPDATE issuers SET vat_number = 'FR44732829320', debtor_iban = "
                                "'FR7630006000011234567890189', debtor_bic = 'AGRIFRPP' WHERE id = :id"),
                           {"id": issuer_id})
        gift = await create_programme(conn, issuer_id=issuer_id, kind="gift", name="Chèque cadeau", unit="EUR")
        await create_rule(conn, issuer_id=issuer_id, actor="bench", rate_bp=790, programme_id=gift.id)
        operator = await create_user(conn, email="operator@bench.test", password="bench-password", role="operator")
        approver = await create_user(conn, email="approver@bench.test", password="bench-password", role="approver")
        await conn.execute(text(
            """
            INSERT INTO merchants (issuer_id, legal_name, trade_name, status, iban, bic, category, siret,
                                   address_line, postcode, commune)
            SELECT :issuer, 'Commerce ' || n || ' SARL', 'Commerce ' || n, 'approved',
                   'FR7630004000031234567890143', 'BNPAFRPP', 'librairie',
                   lpad(n::text, 14, '0'), n || ' rue du Marché', '16000', 'Angoulême'
            FROM generate_series(1, :n) n
            """), {"issuer": issuer_id, "n": merchants})
        merchant_ids = (await conn.execute(text("SELECT id FROM merchants WHERE issuer_id = :i ORDER BY id"),
                                           {"i": issuer_id})).scalars().all()
        await conn.execute(text("CREATE TABLE bench_vouchers (n int PRIMARY KEY, voucher_id bigint, "
                                "merchant_id bigint, account_id bigint)"))
        postings = []
        per_merchant = (redemptions // merchants + 1) * 8_000
        for n, merchant_id in enumerate(merchant_ids):
            account = await open_account(conn, kind=AccountKind.MERCHANT, unit="EUR", owner_type="merchant",
                                         owner_id=merchant_id)
            voucher = await open_account(conn, kind=AccountKind.VOUCHER, unit="EUR", owner_type="bench")
            await conn.execute(text("INSERT INTO bench_vouchers VALUES (:n, :v, :m, :a)"),
                               {"n": n, "v": voucher, "m": merchant_id, "a": account})
            postings.append(Posting(voucher, per_merchant))
        total = per_merchant * len(merchant_ids)
        await transfer(conn, key="bench-issue", kind="issue", postings=[
            Posting(gift.bank_account_id, -total), Posting(gift.reserve_account_id, total),
            Posting(gift.float_account_id, -total), *postings])
    for first in range(1, redemptions + 1, CHUNK):
        async with engine.begin() as conn:
            await conn.execute(REDEEM, {"start": MONTH_START, "seconds": MONTH_SECONDS, "first": first,
                                        "last": min(first + CHUNK - 1, redemptions), "merchants": merchants,
                                        "programme": gift.id})
    async with engine.begin() as conn:
        await conn.execute(text("ANALYZE"))
    return {"issuer_id": issuer_id, "operator": operator, "approver": approver}


async def main(merchants: int, redemptions: int) -> dict:
    directory = Path(tempfile.mkdtemp(prefix="settlement-bench-"))
    server = start_embedded_server(directory / "pg")
    try:
        url = server.get_uri(database="postgres", driver="asyncpg").replace("/postgres?", "/circuit_bench?", 1)
        await ensure_database(url)
        engine = create_engine(url, pool_size=4, max_overflow=0)
        await migrate(engine)
        started = time.perf_counter()
        scheme = await seed(engine, merchants, redemptions)
        seed_s = time.perf_counter() - started
        print(f"seeded {merchants} merchants, {redemptions} redemptions in {seed_s:.1f} s", file=sys.stderr)

        started = time.perf_counter()
        async with engine.begin() as conn:
            batch = await batches.prepare(conn, issuer_id=scheme["issuer_id"], period=MONTH,
                                          user_id=scheme["operator"])
        prepare_s = time.perf_counter() - started
        async with engine.connect() as conn:
            lines = await batches.batch_lines(conn, batch.id)
            payments = await batches.batch_payments(conn, batch.id)
            totals = batches.batch_totals(lines, payments)
        assert sum(line.transactions for line in lines) == redemptions
        print(f"prepared in {prepare_s:.2f} s: {totals}", file=sys.stderr)

        async with engine.begin() as conn:
            await batches.approve(conn, batch_id=batch.id, user_id=scheme["approver"])
        started = time.perf_counter()
        async with engine.begin() as conn:
            files = await batches.export(conn, batch_id=batch.id, user_id=scheme["approver"])
        export_s = time.perf_counter() - started

        started = time.perf_counter()
        rendered = 0
        async with engine.connect() as conn:
            for payment in payments:
                document = await documents.statement(conn, batch_id=batch.id, merchant_id=payment.merchant_id)
                rendered += len(documents.statement_pdf(document)) + len(documents.statement_csv(document))
        statements_s = time.perf_counter() - started
        await engine.dispose()
        return {"bench": "settlement", "merchants": merchants, "redemptions": redemptions,
                "prepare_s": round(prepare_s, 2), "export_s": round(export_s, 2),
                "statements_s": round(statements_s, 2), "statements": len(payments),
                "statement_bytes": rendered, "pain001_bytes": len(files["pain.001"]),
                "payout_cents": totals["payout_cents"], "seed_s": round(seed_s, 1)}
    finally:
        server.cleanup()  # stop the server before its directory goes
        shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--merchants", type=int, default=1_000)
    parser.add_argument("--redemptions", type=int, default=100_000)
    args = parser.parse_args()
    print(json.dumps(asyncio.run(main(args.merchants, args.redemptions))))
