"""Statements and fee invoices: read back from the PDF and the CSV a merchant receives."""

from __future__ import annotations

import csv
import io
from datetime import datetime, timezone

import pypdf

from settlement import batches
from settlement.documents import invoice_pdf, statement, statement_csv, statement_pdf
from settlement.fees import create_rule


def pdf_text(content: bytes) -> str:
    return "\n".join(page.extract_text() for page in pypdf.PdfReader(io.BytesIO(content)).pages)


async def test_statement_and_invoice_carry_the_figures_and_the_legal_mentions(engine, settlement_scheme):
    scheme = await settlement_scheme()
    async with engine.begin() as conn:
        for programme, rate in ((scheme.gift, 790), (scheme.culture, 500)):
            await create_rule(conn, issuer_id=scheme.issuer_id, actor="test", rate_bp=rate, programme_id=programme.id)
    merchant_id = await scheme.merchant(name="Librairie Cœur de Ville")
    first = await scheme.take(merchant_id, scheme.gift, 100_000, datetime(2026, 11, 3, 10, tzinfo=timezone.utc))
    await scheme.take(merchant_id, scheme.culture, 20_000, datetime(2026, 11, 30, 23, 30, tzinfo=timezone.utc))
    await scheme.take(merchant_id, scheme.culture, 20_000, datetime(2026, 11, 30, 22, 30, tzinfo=timezone.utc))
    async with engine.begin() as conn:
        batch = await batches.prepare(conn, issuer_id=scheme.issuer_id, period="2026-11", user_id=scheme.operator_id)
    async with engine.begin() as conn:
        await batches.approve(conn, batch_id=batch.id, user_id=scheme.approver_id)
        await batches.export(conn, batch_id=batch.id, user_id=scheme.approver_id,
                             now=datetime(2026, 12, 2, 9, tzinfo=timezone.utc))
    async with engine.connect() as conn:
        document = await statement(conn, batch_id=batch.id, merchant_id=merchant_id)

    # The 23:30 UTC culture voucher was taken on 1 December in Paris: December's, not on this statement.
    assert [t.amount_cents for t in document.transactions] == [100_000, 20_000]
    rows = list(csv.DictReader(io.StringIO(statement_csv(document).decode())))
    assert [r["reference"] for r in rows if r["section"] == "transaction"][0] == str(first)
    totals = {r["programme"]: r for r in rows if r["section"] == "total"}
    assert (totals["Chèque cadeau"]["fee_excl_vat_cents"], totals["Chèque cadeau"]["vat_cents"]) == ("7900", "1580")
    assert totals["Chèque cadeau"]["net_cents"] == str(100_000 - 7_900 - 1_580)
    assert [r["net_cents"] for r in rows if r["section"] == "payout"] == [str(109_320)]

    statement_text = pdf_text(statement_pdf(document))
    for expected in ("Relevé de reversement - période 2026-11", "Librairie Coeur de Ville SARL", "1 000,00 EUR",
                     "79,00 EUR", "15,80 EUR", "10,00 EUR", "2,00 EUR", "1 093,20 EUR", "30/11/2026 23:30",
                     "SIREN 732829320"):
        assert expected in statement_text, expected

    invoice_text = pdf_text(invoice_pdf(document))
    number = document.invoice.label
    for expected in (f"Facture n° {number}", "SIREN 732829320", "TVA intracommunautaire FR44732829320",
                     "Librairie Coeur de Ville SARL", "Date : 02/12/2026", "Total HT", "89,00 EUR", "17,80 EUR",
                     "Total TTC", "106,80 EUR"):
        assert expected in invoice_text, expected
