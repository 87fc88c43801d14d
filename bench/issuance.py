"""Issuing a 10,000-line employer order, and rendering 1,000 voucher PDFs.

Sets up an embedded database in a temporary directory, a programme, an employer and a confirmed,
paid order of 10,000 lines (not timed), then times:

- ``issue_s``: ``ledger.orders.issue`` in one transaction, committed: 10,000 voucher accounts,
  ONE ledger transfer of 10,001 postings (with its audit event), 10,000 Ed25519-signed tokens,
  codes and voucher rows, the issuance audit events, the order's transition;
- ``pdf_s``: 1,000 single-voucher PDFs (A4, co-branded with a PNG logo, QR drawn as vectors),
  one after the other in this process, as the ZIP for an employer is built;
- ``zip_s``: the employer's ZIP of those 1,000 vouchers (every voucher's PDF, the order's PDF,
  the CSV of codes) written to ``$CIRCUIT_DATA_DIR/voucher-zips/`` by
  ``voucher_print.write_order_zip``, what the server's worker process runs once per issued order;
- also, for information: how long the audit chain takes to seal the events (it does so off
  the writers' path), and the whole order's PDF for the same 1,000 vouchers (three per page).

Targets (issue 4): issue ≤ 10 s, 1,000 PDFs ≤ 30 s.

Run: .venv/bin/python bench/issuance.py [--lines 10000] [--pdfs 1000]
Last line: {"bench": "issuance", "vouchers": 10000, "issue_s": ..., "pdfs": 1000, "pdf_s": ..., "zip_s": ...}
"""

from __future__ import annotations

import argparse
import asyncio
import io
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

from PIL import Image  # noqa: E402
from sqlalchemy import text  # noqa: E402

from audit.chain import seal_all  # noqa: E402
from audit.keys import generate  # noqa: E402
from ledger import orders, voucher_print  # noqa: E402
from ledger.check import check_ledger  # noqa: E402
from ledger.cobranding import check_logo  # noqa: E402
from ledger.database import create_engine, embedded_url, ensure_database, migrate  # noqa: E402
from ledger.employers import create_employer  # noqa: E402
from ledger.order_lines import LineIn  # noqa: E402
from ledger.programmes import create_issuer, create_programme  # noqa: E402
from ledger.vouchers import vouchers_of_order  # noqa: E402


def _logo() -> bytes:
    image = Image.new("RGB", (300, 120), (122, 31, 43))
    image.paste((232, 193, 112), (30, 40, 270, 80))
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


async def main(lines_count: int, pdf_count: int) -> dict:
    directory = Path(tempfile.mkdtemp(prefix="vouchers-bench-"))
    os.environ["CIRCUIT_DATA_DIR"] = str(directory)
    try:
        url = embedded_url()
        await ensure_database(url)
        engine = create_engine(url)
        await migrate(engine)
        async with engine.begin() as conn:
            issuer_id = await create_issuer(conn, name="Office de commerce (bench)", siren="732829320", actor="bench")
            programme = await create_programme(conn, issuer_id=issuer_id, kind="gift", unit="EUR", actor="bench",
                                               name="Chèque cadeau Cœur de ville", face_value_min_cents=1000,
                                               face_value_max_cents=30000, purchase_fee_bp=250,
                                               categories_excluded=["supermarket"])
            employer = await create_employer(conn, issuer_id=issuer_id, name="Grande Entreprise SA",
                                             siret="73282932000074", actor="bench")
            order = await orders.create_order(conn, employer_id=employer.id, programme_id=programme.id,
                                              event="christmas", message="Joyeuses fêtes à toutes et à tous !",
                                              actor="bench")
            await orders.set_cobranding(conn, order.id, actor="bench", logo=check_logo(_logo()))
            await orders.replace_lines(conn, order.id, [
                LineIn(f"Salarié·e n° {i}", f"staff{i}@entreprise.example", 5000 + (i % 5) * 1000)
                for i in range(1, lines_count + 1)], actor="bench")
            _, quote = await orders.confirm(conn, order.id, actor="bench")
            await orders.record_payment(conn, order.id, amount_cents=quote.total_cents, reference="VIR BENCH",
                                        actor="bench")

        started = time.perf_counter()
        async with engine.begin() as conn:
            _, issued = await orders.issue(conn, order.id, actor="bench")
        issue_s = time.perf_counter() - started
        print(f"issued {len(issued)} vouchers in {issue_s:.2f} s", flush=True)
        # The audit chain seals those events moments later, off the writer's path: how long it takes.
        started = time.perf_counter()
        await seal_all(engine, generate())
        seal_s = time.perf_counter() - started
        print(f"sealed the audit events into the chain in {seal_s:.2f} s", flush=True)

        async with engine.connect() as conn:
            vouchers = (await vouchers_of_order(conn, order.id))[:pdf_count]
            batch = await voucher_print.load_batch(conn, vouchers)
            transfers = await conn.scalar(text("SELECT count(DISTINCT issue_transfer_id) FROM vouchers WHERE order_id = :id"),
                                          {"id": order.id})
            report = await check_ledger(conn)
        assert len(issued) == lines_count and transfers == 1 and report.ok, (transfers, report.discrepancies)

        started = time.perf_counter()
        sizes = [len(voucher_print.voucher_pdf(batch, voucher)) for voucher in batch.vouchers]
        pdf_s = time.perf_counter() - started
        print(f"rendered {len(sizes)} voucher PDFs in {pdf_s:.2f} s ({sum(sizes) / len(sizes) / 1024:.0f} KiB each)",
              flush=True)
        started = time.perf_counter()
        whole = voucher_print.order_pdf(batch)
        order_pdf_s = time.perf_counter() - started
        print(f"rendered the order PDF of {len(batch.vouchers)} vouchers in {order_pdf_s:.2f} s "
              f"({len(whole) / 1024 / 1024:.1f} MiB)", flush=True)
        # The ZIP starts with cold QR caches, as in the server's worker process.
        voucher_print.qr_image.cache_clear()
        started = time.perf_counter()
        zip_bytes = voucher_print.write_order_zip(batch, str(voucher_print.zip_path(batch)))
        zip_s = time.perf_counter() - started
        print(f"wrote the employer's ZIP of {len(batch.vouchers)} vouchers in {zip_s:.2f} s "
              f"({zip_bytes / 1024 / 1024:.1f} MiB)", flush=True)
        await engine.dispose()
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    return {"bench": "issuance", "vouchers": lines_count, "issue_s": round(issue_s, 3), "pdfs": len(sizes),
            "pdf_s": round(pdf_s, 3), "zip_s": round(zip_s, 3), "zip_mib": round(zip_bytes / 1024 / 1024, 1),
            "order_pdf_s": round(order_pdf_s, 3), "seal_s": round(seal_s, 3)}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=10_000)
    parser.add_argument("--pdfs", type=int, default=1_000)
    arguments = parser.parse_args()
    print(json.dumps(asyncio.run(main(arguments.lines, arguments.pdfs))))
