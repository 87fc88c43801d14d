"""Fee invoices, numbered without gaps per issuer.

The number comes from a counter row per issuer, locked (``UPDATE … RETURNING``) by the same
transaction that writes the invoice: concurrent invoices queue on that row, and a transaction
that fails rolls the counter back with its invoice, so no number is ever skipped or reused.
Invoices are append-only (trigger); a correction is a new invoice.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import date
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from audit.chain import append

NUMBER_PREFIX = "F"


@dataclass(frozen=True, slots=True)
class Invoice:
    id: int
    issuer_id: int
    number: int
    merchant_id: int
    batch_id: int | None
    issued_on: date
    fee_cents: int
    vat_cents: int
    sponsor_cents: int
    lines: list[dict[str, Any]]

    @property
    def label(self) -> str:
        return f"{NUMBER_PREFIX}{self.issuer_id}-{self.number:06d}"

    @property
    def total_cents(self) -> int:
        return self.fee_cents + self.vat_cents


async def next_number(conn: AsyncConnection, issuer_id: int) -> int:
    """Take the issuer's next invoice number; the row stays locked until the transaction ends."""
    return (
        await conn.execute(
            text(
                """
                INSERT INTO invoice_counters (issuer_id, last_number) VALUES (:issuer, 1)
                ON CONFLICT (issuer_id) DO UPDATE SET last_number = invoice_counters.last_number + 1
                RETURNING last_number
                """
            ),
            {"issuer": issuer_id},
        )
    ).scalar_one()


async def issue_invoice(
    conn: AsyncConnection,
    *,
    issuer_id: int,
    merchant_id: int,
    batch_id: int | None,
    issued_on: date,
    fee_cents: int,
    vat_cents: int,
    sponsor_cents: int = 0,
    lines: list[dict[str, Any]],
    actor: str,
) -> Invoice:
    number = await next_number(conn, issuer_id)
    invoice_id = await conn.scalar(
        text(
            """
            INSERT INTO invoices (issuer_id, number, merchant_id, batch_id, issued_on, fee_cents, vat_cents,
                                  sponsor_cents, lines)
            VALUES (:issuer, :number, :merchant, :batch, :issued_on, :fee, :vat, :sponsor, CAST(:lines AS jsonb))
            RETURNING id
            """
        ),
        {"issuer": issuer_id, "number": number, "merchant": merchant_id, "batch": batch_id,
         "issued_on": issued_on, "fee": fee_cents, "vat": vat_cents, "sponsor": sponsor_cents,
         "lines": json.dumps(lines, ensure_ascii=False)},
    )
    invoice = Invoice(invoice_id, issuer_id, number, merchant_id, batch_id, issued_on, fee_cents, vat_cents,
                      sponsor_cents, lines)
    await append(conn, event_type="settlement.invoice_issued", actor=actor, payload={
        "invoice_id": invoice_id, "number": invoice.label, "issuer_id": issuer_id, "merchant_id": merchant_id,
        "batch_id": batch_id, "issued_on": issued_on.isoformat(), "fee_cents": fee_cents,
        "vat_cents": vat_cents, "sponsor_cents": sponsor_cents,
    })
    return invoice


_COLUMNS = "id, issuer_id, number, merchant_id, batch_id, issued_on, fee_cents, vat_cents, sponsor_cents, lines"


def _invoice(row) -> Invoice:
    lines = row[9] if isinstance(row[9], list) else json.loads(row[9])
    return Invoice(*row[:9], lines)


async def invoice_for(conn: AsyncConnection, *, batch_id: int, merchant_id: int) -> Invoice | None:
    row = (
        await conn.execute(
            text(f"SELECT {_COLUMNS} FROM invoices WHERE batch_id = :batch AND merchant_id = :merchant"),
            {"batch": batch_id, "merchant": merchant_id},
        )
    ).one_or_none()
    return _invoice(row) if row else None


async def invoice_numbers(conn: AsyncConnection, issuer_id: int) -> list[int]:
    return list((await conn.execute(
        text("SELECT number FROM invoices WHERE issuer_id = :issuer ORDER BY number"), {"issuer": issuer_id}
    )).scalars())
