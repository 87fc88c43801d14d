"""What a merchant receives per batch: a statement (PDF and CSV) and a fee invoice (PDF).

Documents are rendered from the batch's stored figures, never recomputed, so a statement read
a year later says what was paid. The PDF uses the standard Helvetica font (no font file to
ship); text outside Latin-1 is transliterated (``€`` is written ``EUR``).
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from datetime import datetime

from fpdf import FPDF, XPos, YPos
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection
from text_unidecode import unidecode

from settlement.batches import Batch, Line, Payment, batch_lines, batch_payments, get_batch
from settlement.errors import PaymentNotFound
from settlement.invoices import Invoice, invoice_for
from settlement.periods import PARIS


@dataclass(frozen=True, slots=True)
class Party:
    name: str
    siren: str | None
    vat_number: str | None
    address: str | None
    extra: str | None = None  # the merchant's trade name and SIRET


@dataclass(frozen=True, slots=True)
class Transaction:
    taking_id: int
    effective_at: datetime
    kind: str  # redeem, refund, payment, reconversion
    programme: str
    amount_cents: int


@dataclass(frozen=True, slots=True)
class Statement:
    batch: Batch
    issuer: Party
    merchant: Party
    programmes: dict[int, str]
    lines: list[Line]
    payment: Payment
    transactions: list[Transaction]
    invoice: Invoice | None


async def statement(conn: AsyncConnection, *, batch_id: int, merchant_id: int) -> Statement:
    batch = await get_batch(conn, batch_id)
    payments = await batch_payments(conn, batch_id, merchant_id)
    if not payments:
        raise PaymentNotFound(batch_id=batch_id, merchant_id=merchant_id)
    issuer = (await conn.execute(text("SELECT name, siren, vat_number, address FROM issuers WHERE id = :id"),
                                 {"id": batch.issuer_id})).one()
    merchant = (await conn.execute(text(
        "SELECT legal_name, siret, address_line, postcode, commune, trade_name FROM merchants WHERE id = :id"),
        {"id": merchant_id})).one()
    programmes = dict((await conn.execute(text("SELECT id, name FROM programmes WHERE issuer_id = :i"),
                                          {"i": batch.issuer_id})).all())
    rows = await conn.execute(text(
        """
        SELECT t.id, t.effective_at, t.kind, t.programme_id, t.amount_cents
        FROM settlement_items i JOIN merchant_takings t ON t.id = i.taking_id
        WHERE i.batch_id = :batch AND t.merchant_id = :merchant
        UNION ALL
        SELECT r.id, r.requested_at, 'reconversion', r.programme_id, r.amount_cents
        FROM settlement_reconversions s JOIN reconversions r ON r.id = s.reconversion_id
        WHERE s.batch_id = :batch AND r.merchant_id = :merchant
        ORDER BY 2, 1
        """), {"batch": batch_id, "merchant": merchant_id})
    address = ", ".join(part for part in (merchant.address_line, f"{merchant.postcode or ''} {merchant.commune or ''}".strip())
                        if part)
    return Statement(
        batch=batch,
        issuer=Party(issuer.name, issuer.siren, issuer.vat_number, issuer.address),
        merchant=Party(merchant.legal_name, merchant.siret[:9] if merchant.siret else None, None, address or None,
                       f"{merchant.trade_name} - SIRET {merchant.siret}" if merchant.siret else merchant.trade_name),
        programmes=programmes,
        lines=await batch_lines(conn, batch_id, merchant_id),
        payment=payments[0],
        transactions=[Transaction(r.id, r.effective_at, r.kind, programmes[r.programme_id], r.amount_cents)
                      for r in rows],
        invoice=await invoice_for(conn, batch_id=batch_id, merchant_id=merchant_id),
    )


def euros(cents: int) -> str:
    """1 093,20 EUR: French grouping and decimal comma, the unit spelled for Latin-1 fonts."""
    sign = "-" if cents < 0 else ""
    whole, rest = divmod(abs(cents), 100)
    return f"{sign}{whole:,}".replace(",", " ") + f",{rest:02d} EUR"


def _paris(moment: datetime) -> str:
    return moment.astimezone(PARIS).strftime("%d/%m/%Y %H:%M")


def statement_csv(document: Statement) -> bytes:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["section", "date_paris", "reference", "programme", "kind", "transactions", "amount_cents",
                     "refunds_cents", "fee_excl_vat_cents", "vat_cents", "sponsor_cents", "net_cents"])
    for item in document.transactions:
        writer.writerow(["transaction", _paris(item.effective_at), item.taking_id, item.programme, item.kind, 1,
                         item.amount_cents, "", "", "", "", ""])
    for line in document.lines:
        writer.writerow(["total", "", "", document.programmes[line.programme_id], line.kind, line.transactions,
                         line.gross_cents, line.refunds_cents, line.fee_cents, line.vat_cents, line.sponsor_cents,
                         line.collect_cents - line.merchant_fee_cents])
    p = document.payment
    for label, value in (("carried_in", p.carried_in_cents), ("counter_sales", -p.counter_cents),
                         ("payout", p.payout_cents), ("carried_out", p.carried_out_cents)):
        writer.writerow([label, "", "", "", "", "", "", "", "", "", "", value])
    return out.getvalue().encode()


class _Pdf(FPDF):
    def __init__(self, title: str) -> None:
        super().__init__(format="A4")
        self.set_title(_latin1(title))
        self.set_creator("Circuit")
        self.set_auto_page_break(True, margin=15)
        self.add_page()
        self.set_font("Helvetica", size=9)

    def line_of(self, *cells: tuple[str, float, str], bold: bool = False) -> None:
        self.set_font("Helvetica", "B" if bold else "", 9)
        for value, width, align in cells:
            self.cell(width, 5, _latin1(value), align=align)
        self.ln(5)

    def para(self, value: str, *, size: int = 9, bold: bool = False) -> None:
        self.set_font("Helvetica", "B" if bold else "", size)
        self.multi_cell(0, size * 0.5 + 1, _latin1(value), new_x=XPos.LMARGIN, new_y=YPos.NEXT)


def _latin1(value: str) -> str:
    value = value.replace("€", "EUR").replace("œ", "oe").replace("Œ", "OE")
    return "".join(ch if ord(ch) < 256 else unidecode(ch) for ch in value)


def _party(pdf: _Pdf, title: str, party: Party) -> None:
    pdf.para(title, bold=True)
    details = [party.name, party.extra, party.address,
               f"SIREN {party.siren}" if party.siren else None,
               f"TVA intracommunautaire {party.vat_number}" if party.vat_number else None]
    pdf.para("\n".join(d for d in details if d))
    pdf.ln(2)


def statement_pdf(document: Statement) -> bytes:
    batch, p = document.batch, document.payment
    pdf = _Pdf(f"Relevé {batch.period} - {document.merchant.name}")
    pdf.para(f"Relevé de reversement - période {batch.period} - lot {batch.id}", size=13, bold=True)
    pdf.ln(2)
    _party(pdf, "Émetteur", document.issuer)
    _party(pdf, "Commerçant", document.merchant)
    pdf.para("Transactions", bold=True)
    pdf.line_of(("Date (Paris)", 35, "L"), ("Réf.", 20, "L"), ("Programme", 60, "L"), ("Type", 30, "L"),
                ("Montant", 35, "R"), bold=True)
    for item in document.transactions:
        pdf.line_of((_paris(item.effective_at), 35, "L"), (str(item.taking_id), 20, "L"), (item.programme, 60, "L"),
                    (item.kind, 30, "L"), (euros(item.amount_cents), 35, "R"))
    pdf.ln(3)
    pdf.para("Totaux par programme", bold=True)
    pdf.line_of(("Programme", 50, "L"), ("Brut", 25, "R"), ("Rembours.", 25, "R"), ("Frais HT", 22, "R"),
                ("TVA", 20, "R"), ("Sponsor", 22, "R"), ("Net", 26, "R"), bold=True)
    for line in document.lines:
        label = document.programmes[line.programme_id] + (" (reconversion)" if line.kind == "reconversion" else "")
        pdf.line_of((label, 50, "L"), (euros(line.gross_cents), 25, "R"), (euros(line.refunds_cents), 25, "R"),
                    (euros(line.fee_cents), 22, "R"), (euros(line.vat_cents), 20, "R"),
                    (euros(line.sponsor_cents), 22, "R"), (euros(line.collect_cents - line.merchant_fee_cents), 26, "R"))
    pdf.ln(3)
    for label, value in (("Brut", sum(line.gross_cents for line in document.lines)),
                         ("Frais HT", sum(line.fee_cents for line in document.lines)),
                         ("TVA sur frais", sum(line.vat_cents for line in document.lines)),
                         ("Part sponsor", sum(line.sponsor_cents for line in document.lines)),
                         ("Solde reporté entrant", p.carried_in_cents),
                         ("Ventes au comptoir de change", -p.counter_cents),
                         ("Net versé", p.payout_cents),
                         ("Solde reporté sur le prochain lot", p.carried_out_cents)):
        pdf.line_of((label, 80, "L"), (euros(value), 40, "R"), bold=label == "Net versé")
    if p.payout_cents:
        pdf.ln(2)
        pdf.para(f"Virement SEPA vers {p.iban}, référence {p.end_to_end_id}.")
    if document.invoice:
        pdf.para(f"Facture des frais : n° {document.invoice.label}.")
    pdf.para("Les unités de monnaie locale reçues restent sur votre compte ; la reconversion en euros se fait sur "
             "demande.")
    return bytes(pdf.output())


def invoice_pdf(document: Statement) -> bytes:
    invoice = document.invoice
    if invoice is None:
        raise PaymentNotFound("this batch charged this merchant no fee: there is no invoice",
                              message_fr="Ce lot n'a facturé aucun frais à ce commerçant : il n'y a pas de facture.",
                              batch_id=document.batch.id)
    pdf = _Pdf(f"Facture {invoice.label}")
    pdf.para(f"Facture n° {invoice.label}", size=13, bold=True)
    pdf.para(f"Date : {invoice.issued_on:%d/%m/%Y} - période {document.batch.period} - lot {document.batch.id}")
    pdf.ln(2)
    _party(pdf, "Émetteur", document.issuer)
    _party(pdf, "Client", document.merchant)
    pdf.line_of(("Désignation", 90, "L"), ("Base", 30, "R"), ("Montant HT", 30, "R"), ("TVA", 30, "R"), bold=True)
    for item in invoice.lines:
        label = f"Frais de gestion {document.programmes.get(item['programme_id'], '')}"
        if item["kind"] == "reconversion":
            label = f"Frais de reconversion {document.programmes.get(item['programme_id'], '')}"
        pdf.line_of((label, 90, "L"), (euros(item["basis_cents"]), 30, "R"), (euros(item["fee_cents"]), 30, "R"),
                    (euros(item["vat_cents"]), 30, "R"))
    pdf.ln(3)
    for label, value in (("Total HT", invoice.fee_cents), ("TVA", invoice.vat_cents),
                         ("Total TTC", invoice.total_cents)):
        pdf.line_of((label, 120, "L"), (euros(value), 60, "R"), bold=label == "Total TTC")
    pdf.ln(2)
    if invoice.sponsor_cents:
        pdf.para(f"Dont {euros(invoice.sponsor_cents)} pris en charge par le sponsor : rien n'est déduit de votre "
                 "reversement pour cette part.")
    pdf.para("Montant réglé par compensation sur le reversement du lot cité. Pas d'escompte pour paiement anticipé. "
             "Pénalités de retard : trois fois le taux d'intérêt légal ; indemnité forfaitaire pour frais de "
             "recouvrement : 40 EUR.")
    return bytes(pdf.output())
