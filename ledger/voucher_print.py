"""What a voucher looks like: its QR code (PNG), its printable PDF (one per voucher, or a whole
order on A4 sheets, three to a page), the ZIP an employer downloads, and the holder's phone page.

Every printed voucher is co-branded (the employer's logo, two colours and message), bilingual
(French and the programme's second language), and carries the QR, the typed code, the
amount, the last valid day and where it is accepted. Rendering is pure (no database) once
:func:`load_order_batch` / :func:`load_batch` / :func:`load_page` have read what it needs.
An order's ZIP is rendered once, in a worker process, and kept as a file (:func:`rendered_zip`).
"""

from __future__ import annotations

import asyncio
import csv
import hashlib
import html
import io
import math
import os
import pickle
import sys
import time
import unicodedata
import zipfile
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import lru_cache
from pathlib import Path
from typing import BinaryIO

import qrcode
import structlog
from fpdf import FPDF
from PIL import Image
from qrcode.constants import ERROR_CORRECT_Q
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from ledger.cobranding import LOGO_PRINT_H_MM, LOGO_PRINT_W_MM, Logo, rgb
from ledger.database import data_dir
from ledger.errors import NotFound
from ledger.orders import format_money, get_logo, get_order
from ledger.programmes import PARIS, ProgrammeRules, get_rules
from ledger.tokens import format_code
from ledger.vouchers import Voucher, vouchers_of_order

# PDF's standard Helvetica with the Windows-1252 encoding: French, English, Basque, Occitan,
# Breton, "€" and "œ" all fit, and no font is embedded or subset (which costs more than
# drawing a voucher). A character outside it degrades to its unaccented letter.
FONT = "helvetica"
PDF_ENCODING = "windows-1252"
QR_CACHE_SIZE = 4_096
CARDS_PER_PAGE = 3
CARD_W_MM, CARD_H_MM = 190.0, 88.0
MARGIN_MM = 10.0
QR_MM = 44.0
QR_BORDER_MODULES = 4
PAGE_BASE_URL = "/v/"
_WORDS = {
    "fr": {"for": "Pour", "valid_until": "Valable jusqu'au", "accepted": "Où l'utiliser", "code": "Code",
           "gift": "Chèque cadeau", "culture": "Chèque culture", "local_currency": "Monnaie locale",
           "everywhere": "Dans tous les commerces agréés du réseau",
           "except": "sauf", "only": "Uniquement", "partial": "Utilisable en plusieurs fois",
           "single": "À utiliser en une seule fois", "balance": "Solde", "history": "Utilisations",
           "none": "Pas encore utilisé", "revoked": "Révoqué", "expired": "Expiré", "offered_by": "Offert par"},
    "en": {"for": "For", "valid_until": "Valid until", "accepted": "Where to use it", "code": "Code",
           "gift": "Gift voucher", "culture": "Culture voucher", "local_currency": "Local currency",
           "everywhere": "At every approved shop of the scheme", "except": "except", "only": "Only",
           "partial": "Can be spent in several goes", "single": "To be spent in one go", "balance": "Balance",
           "history": "Spending", "none": "Not used yet", "revoked": "Revoked", "expired": "Expired",
           "offered_by": "Offered by"},
    "eu": {"for": "Norentzat", "valid_until": "Baliozkoa arte", "accepted": "Non erabili", "code": "Kodea",
           "gift": "Opari txekea", "culture": "Kultura txekea", "local_currency": "Tokiko moneta",
           "everywhere": "Sareko merkatari onartu guztietan", "except": "salbu", "only": "Bakarrik",
           "partial": "Hainbat alditan erabil daiteke", "single": "Behin bakarrik erabiltzekoa", "balance": "Saldoa",
           "history": "Erabilerak", "none": "Oraindik erabili gabe", "revoked": "Baliogabetua", "expired": "Iraungia",
           "offered_by": "Eskaintzailea"},
}


@dataclass(frozen=True, slots=True)
class Branding:
    employer_name: str | None
    message: str
    colour_primary: str
    colour_secondary: str
    logo: Logo | None


@dataclass(frozen=True, slots=True)
class Batch:
    """Vouchers of one programme with one branding, ready to print."""

    programme: ProgrammeRules
    issuer_name: str
    issuer_siren: str | None
    branding: Branding
    vouchers: tuple[Voucher, ...]


DEFAULT_BRANDING = Branding(None, "", "#1F4E79", "#F2C14E", None)


def _words(language: str) -> dict[str, str]:
    return _WORDS.get(language, _WORDS["en"])


def last_valid_day(voucher: Voucher, language: str = "en") -> str:
    """The last day a voucher can be spent (Paris), written the way the language writes dates."""
    day = (voucher.expires_at.astimezone(PARIS) - timedelta(seconds=1)).date()
    return day.strftime("%d/%m/%Y") if language == "fr" else day.isoformat()


def acceptance_text(programme: ProgrammeRules, language: str) -> str:
    """Where the programme's vouchers are accepted, in words, from its own text or its rules."""
    described = programme.text_in(language, "description") if language in programme.texts or language == "fr" else ""
    if described:
        return described
    words = _words(language)
    if programme.categories_allowed is not None:
        return f"{words['only']}: {', '.join(programme.categories_allowed)}"
    if programme.categories_excluded:
        return f"{words['everywhere']}, {words['except']}: {', '.join(programme.categories_excluded)}"
    return words["everywhere"]


# --- QR --------------------------------------------------------------------------------------

def qr_matrix(token: str) -> list[list[bool]]:
    """The QR modules of a token: alphanumeric mode, error correction Q, smallest version,
    the mask the QR standard's penalty rules pick."""
    qr = qrcode.QRCode(error_correction=ERROR_CORRECT_Q, border=0)
    qr.add_data(token)
    qr.make(fit=True)
    return qr.get_matrix()


@lru_cache(maxsize=QR_CACHE_SIZE)
def qr_image(token: str) -> Image.Image:
    """The QR as a 1-bit image, one pixel per module, with the standard quiet zone. Cached:
    an order's PDF, its ZIP and its single PDFs draw the same codes."""
    matrix = qr_matrix(token)
    side = len(matrix) + 2 * QR_BORDER_MODULES
    image = Image.new("1", (side, side), 1)
    pixels = image.load()
    for y, row in enumerate(matrix):
        for x, dark in enumerate(row):
            if dark:
                pixels[x + QR_BORDER_MODULES, y + QR_BORDER_MODULES] = 0
    return image


def qr_png(token: str, *, module_px: int = 8) -> bytes:
    image = qr_image(token)
    out = io.BytesIO()
    image.resize((image.width * module_px, image.height * module_px), Image.NEAREST).save(out, format="PNG", optimize=True)
    return out.getvalue()


# --- PDF -------------------------------------------------------------------------------------

# Letters Unicode does not decompose into a base letter and an accent.
_PDF_SUBSTITUTES = {"\u202f": "\xa0", "\u2009": " ", "\u2011": "-", "\u2212": "-", "Ł": "L", "ł": "l",
                    "Đ": "D", "đ": "d", "Ħ": "H", "ħ": "h", "ı": "i", "Ŧ": "T", "ŧ": "t"}


def pdf_text(value: str) -> str:
    """``value`` with every character Helvetica-in-Windows-1252 cannot show replaced by its
    closest letter (ł → l, ő → o) or, failing that, by "?"."""
    try:
        value.encode(PDF_ENCODING)
        return value
    except UnicodeEncodeError:
        pass
    out = []
    for character in value:
        character = _PDF_SUBSTITUTES.get(character, character)
        try:
            character.encode(PDF_ENCODING)
        except UnicodeEncodeError:
            plain = unicodedata.normalize("NFKD", character).encode("ascii", "ignore").decode()
            character = plain or "?"
        out.append(character)
    return "".join(out)


class _VoucherPDF(FPDF):
    def normalize_text(self, text: str) -> str:
        return super().normalize_text(pdf_text(text))


def _new_pdf(title: str) -> FPDF:
    pdf = _VoucherPDF(orientation="P", unit="mm", format="A4")
    pdf.core_fonts_encoding = PDF_ENCODING
    pdf.set_auto_page_break(False)
    pdf.set_creator("Circuit")
    pdf.set_title(pdf_text(title))
    return pdf


def _card(pdf: FPDF, batch: Batch, voucher: Voucher, x: float, y: float) -> None:
    programme, brand = batch.programme, batch.branding
    second = programme.second_language
    fr, other = _words("fr"), _words(second)
    primary, secondary = rgb(brand.colour_primary), rgb(brand.colour_secondary)

    pdf.set_draw_color(180, 180, 180)
    pdf.set_line_width(0.2)
    pdf.set_dash_pattern(dash=2, gap=1.5)
    pdf.rect(x, y, CARD_W_MM, CARD_H_MM)  # cut line
    pdf.set_dash_pattern()
    pdf.set_fill_color(*primary)
    pdf.rect(x, y, CARD_W_MM, 16, style="F")
    pdf.set_fill_color(*secondary)
    pdf.rect(x, y + 16, CARD_W_MM, 1.6, style="F")

    text_left = x + 4
    if brand.logo is not None:
        pdf.set_fill_color(255, 255, 255)
        pdf.rect(x + 3, y + 2, 30, 12, style="F")
        pdf.image(io.BytesIO(brand.logo.data), x=x + 4, y=y + 2.5, w=LOGO_PRINT_W_MM, h=LOGO_PRINT_H_MM,
                  keep_aspect_ratio=True)
        text_left = x + 36
    pdf.set_text_color(255, 255, 255)
    pdf.set_font(FONT, "B", 14)
    pdf.set_xy(text_left, y + 2.2)
    pdf.cell(CARD_W_MM - (text_left - x) - 4, 6.5, programme.text_in("fr", "name"))
    pdf.set_font(FONT, "", 10)
    pdf.set_xy(text_left, y + 8.6)
    pdf.cell(CARD_W_MM - (text_left - x) - 4, 5.5, programme.text_in(second, "name"))

    body_w = CARD_W_MM - QR_MM - 14
    pdf.set_text_color(20, 20, 20)
    pdf.set_font(FONT, "B", 26)
    pdf.set_xy(x + 4, y + 20)
    pdf.cell(body_w, 11, format_money(voucher.face_value_cents, programme.unit))
    pdf.set_font(FONT, "", 9.5)
    if voucher.beneficiary_name:
        pdf.set_xy(x + 4, y + 32)
        pdf.cell(body_w, 5, f"{fr['for']} / {other['for']} : {voucher.beneficiary_name}")
    if brand.employer_name:
        pdf.set_xy(x + 4, y + 37)
        pdf.cell(body_w, 5, f"{fr['offered_by']} / {other['offered_by']} : {brand.employer_name}")
    if brand.message:
        pdf.set_font(FONT, "I", 9.5)
        pdf.set_text_color(*primary)
        pdf.set_xy(x + 4, y + 43)
        pdf.multi_cell(body_w, 4.4, brand.message, max_line_height=4.4)
        pdf.set_text_color(20, 20, 20)
    pdf.set_font(FONT, "B", 9)
    pdf.set_xy(x + 4, y + 58)
    pdf.cell(body_w, 4.5, f"{fr['valid_until']} {last_valid_day(voucher, 'fr')} · "
                          f"{other['valid_until']} {last_valid_day(voucher, second)}")
    pdf.set_font(FONT, "", 8)
    pdf.set_xy(x + 4, y + 63)
    pdf.multi_cell(body_w, 3.8, f"{fr['accepted']} : {acceptance_text(programme, 'fr')}\n"
                                f"{other['accepted']}: {acceptance_text(programme, second)}\n"
                                f"{fr['partial'] if programme.partial_redemption else fr['single']} · "
                                f"{other['partial'] if programme.partial_redemption else other['single']}",
                   max_line_height=3.8)
    pdf.set_font(FONT, "", 6.5)
    pdf.set_text_color(110, 110, 110)
    pdf.set_xy(x + 4, y + CARD_H_MM - 5)
    siren = f" · SIREN {batch.issuer_siren}" if batch.issuer_siren else ""
    pdf.cell(body_w, 3, f"{batch.issuer_name}{siren} · n° {voucher.id}")

    qr_x, qr_y = x + CARD_W_MM - QR_MM - 6, y + 20
    pdf.image(qr_image(voucher.token), x=qr_x, y=qr_y, w=QR_MM, h=QR_MM)
    pdf.set_text_color(20, 20, 20)
    pdf.set_font(FONT, "B", 11)
    pdf.set_xy(qr_x - 4, qr_y + QR_MM + 1)
    pdf.cell(QR_MM + 8, 5.5, format_code(voucher.code), align="C")
    pdf.set_font(FONT, "", 7)
    pdf.set_xy(qr_x - 4, qr_y + QR_MM + 6.5)
    pdf.cell(QR_MM + 8, 3.5, f"{fr['code']} / {other['code']}", align="C")


def order_pdf(batch: Batch) -> bytes:
    """Every voucher of the batch on A4 sheets, three to a page, with cut lines."""
    pdf = _order_pdf_start(batch)
    for index, voucher in enumerate(batch.vouchers):
        _order_pdf_add(pdf, batch, index, voucher)
    return bytes(pdf.output())


def _order_pdf_start(batch: Batch) -> FPDF:
    return _new_pdf(f"{batch.programme.name} – {len(batch.vouchers)} vouchers")


def _order_pdf_add(pdf: FPDF, batch: Batch, index: int, voucher: Voucher) -> None:
    slot = index % CARDS_PER_PAGE
    if slot == 0:
        pdf.add_page()
    _card(pdf, batch, voucher, MARGIN_MM, MARGIN_MM + slot * (CARD_H_MM + 4))


def voucher_pdf(batch: Batch, voucher: Voucher) -> bytes:
    """One voucher on an A4 page (to print at home or forward by email)."""
    pdf = _new_pdf(f"{batch.programme.name} – {format_code(voucher.code)}")
    pdf.add_page()
    _card(pdf, batch, voucher, MARGIN_MM, MARGIN_MM)
    return bytes(pdf.output())


def codes_csv(batch: Batch) -> bytes:
    out = io.StringIO()
    writer = csv.writer(out, delimiter=";")
    writer.writerow(["voucher_id", "beneficiary_name", "beneficiary_email", "amount", "unit", "code", "valid_until",
                     "pdf", "page"])
    for voucher in batch.vouchers:
        writer.writerow([voucher.id, voucher.beneficiary_name or "", voucher.beneficiary_email or "",
                         f"{voucher.face_value_cents / 100:.2f}", batch.programme.unit, format_code(voucher.code),
                         last_valid_day(voucher), _pdf_name(voucher), f"{PAGE_BASE_URL}{voucher.page_secret}"])
    # UTF-8 with BOM: what spreadsheets on Windows open without garbling accents.
    return "\ufeff".encode() + out.getvalue().encode()


def _pdf_name(voucher: Voucher) -> str:
    return f"vouchers/{voucher.id}-{voucher.code}.pdf"


def _write_zip(batch: Batch, out: BinaryIO) -> None:
    """The employer's download: every voucher's PDF, the whole order's PDF, a CSV of codes."""
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("codes.csv", codes_csv(batch))
        # Each voucher's card goes on the order's sheets and in its own PDF in one step: its QR
        # (the costly part) is computed once, even for an order larger than the QR cache.
        whole = _order_pdf_start(batch)
        for index, voucher in enumerate(batch.vouchers):
            _order_pdf_add(whole, batch, index, voucher)
            archive.writestr(_pdf_name(voucher), voucher_pdf(batch, voucher))
        archive.writestr("all-vouchers.pdf", bytes(whole.output()))


# --- loading ---------------------------------------------------------------------------------

async def _issuer(conn: AsyncConnection, issuer_id: int) -> tuple[str, str | None]:
    row = (await conn.execute(text("SELECT name, siren FROM issuers WHERE id = :id"), {"id": issuer_id})).one()
    return row.name, row.siren


async def _branding(conn: AsyncConnection, order_id: int | None) -> Branding:
    if order_id is None:
        return DEFAULT_BRANDING
    order = await get_order(conn, order_id)
    employer = await conn.scalar(text("SELECT name FROM employers WHERE id = :id"), {"id": order.employer_id})
    return Branding(employer, order.message, order.colour_primary, order.colour_secondary, await get_logo(conn, order_id))


class OrderNotIssued(NotFound):
    code = "order_not_issued"
    message = "This order has no vouchers yet: they exist once it is paid and issued."
    message_fr = "Cette commande n'a pas encore de titres : ils existent une fois payée et émise."


async def load_order_batch(conn: AsyncConnection, order_id: int) -> Batch:
    vouchers = await vouchers_of_order(conn, order_id, current=True)
    if not vouchers:
        raise OrderNotIssued(order_id=order_id)
    return await load_batch(conn, vouchers)


async def load_batch(conn: AsyncConnection, vouchers: list[Voucher]) -> Batch:
    first = vouchers[0]
    assert all(v.programme_id == first.programme_id and v.order_id == first.order_id for v in vouchers)
    programme = await get_rules(conn, first.programme_id)
    name, siren = await _issuer(conn, programme.issuer_id)
    return Batch(programme, name, siren, await _branding(conn, first.order_id), tuple(vouchers))


@dataclass(frozen=True, slots=True)
class Spending:
    at: datetime
    amount_cents: int  # negative: spent; positive: refunded
    merchant: str | None


@dataclass(frozen=True, slots=True)
class Page:
    batch: Batch
    voucher: Voucher
    balance_cents: int
    history: tuple[Spending, ...]


async def load_page(conn: AsyncConnection, voucher: Voucher) -> Page:
    batch = await load_batch(conn, [voucher])
    balance = await conn.scalar(text("SELECT balance_cents FROM accounts WHERE id = :id"), {"id": voucher.account_id})
    rows = (await conn.execute(
        text(
            """
            SELECT t.effective_at, p.amount_cents,
                   (SELECT m.trade_name FROM postings q JOIN accounts a ON a.id = q.account_id
                      JOIN merchants m ON a.owner_type = 'merchant' AND a.owner_id = m.id::text
                     WHERE q.transfer_id = t.id AND q.account_id <> p.account_id LIMIT 1) AS merchant
            FROM postings p JOIN transfers t ON t.id = p.transfer_id
            WHERE p.account_id = :account AND t.kind IN ('voucher.redeem', 'voucher.refund')
              AND t.phase IN ('posted', 'post_pending')
            ORDER BY t.effective_at DESC, t.id DESC LIMIT 200
            """
        ),
        {"account": voucher.account_id},
    )).all()
    return Page(batch, voucher, int(balance), tuple(Spending(r.effective_at, r.amount_cents, r.merchant) for r in rows))


# --- the holder's page -----------------------------------------------------------------------

def voucher_html(page: Page) -> str:
    """A phone-sized page: QR (served beside it), balance, last valid day, spending history."""
    voucher, programme, brand = page.voucher, page.batch.programme, page.batch.branding
    second = programme.second_language
    fr, other = _words("fr"), _words(second)
    e = html.escape
    state = ""
    if voucher.status == "revoked":
        state = f'<p class="state">{fr["revoked"]} · {other["revoked"]}</p>'
    elif voucher.status == "expired" or voucher.expires_at <= datetime.now(voucher.expires_at.tzinfo):
        state = f'<p class="state">{fr["expired"]} · {other["expired"]}</p>'
    # A revoked or expired voucher shows no QR: no one should try to pay with it.
    qr = "" if state else f'<img class="qr" src="{PAGE_BASE_URL}{e(voucher.page_secret)}/qr.png" alt="QR">'
    rows = "".join(
        f"<tr><td>{e(s.at.astimezone(PARIS).strftime('%d/%m/%Y %H:%M'))}</td><td>{e(s.merchant or '')}</td>"
        f"<td class=\"num\">{e(format_money(s.amount_cents, programme.unit))}</td></tr>"
        for s in page.history
    ) or f'<tr><td colspan="3">{fr["none"]} · {e(other["none"])}</td></tr>'
    message = f'<p class="message">{e(brand.message)}</p>' if brand.message else ""
    offered = (f'<p class="small">{fr["offered_by"]} / {e(other["offered_by"])} : {e(brand.employer_name)}</p>'
               if brand.employer_name else "")
    return f"""<!doctype html>
<html lang="fr"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="robots" content="noindex">
<title>{e(programme.text_in('fr', 'name'))} – {e(format_code(voucher.code))}</title>
<style>
 body {{ margin: 0; font-family: system-ui, sans-serif; background: #f4f4f4; color: #1a1a1a; }}
 main {{ max-width: 420px; margin: 0 auto; background: #fff; min-height: 100vh; }}
 header {{ background: {brand.colour_primary}; color: #fff; padding: 16px; border-bottom: 5px solid {brand.colour_secondary}; }}
 header h1 {{ font-size: 1.2rem; margin: 0; }} header p {{ margin: 4px 0 0; opacity: .9; }}
 section {{ padding: 16px; }}
 .qr {{ display: block; width: 100%; max-width: 300px; margin: 0 auto; image-rendering: pixelated; }}
 .code {{ text-align: center; font: 700 1.3rem ui-monospace, monospace; letter-spacing: .08em; }}
 .balance {{ font-size: 2.2rem; font-weight: 700; margin: 0; }}
 .state {{ background: #b00020; color: #fff; padding: 8px; border-radius: 6px; font-weight: 700; }}
 .message {{ font-style: italic; color: {brand.colour_primary}; }}
 .small {{ font-size: .85rem; color: #555; }}
 table {{ width: 100%; border-collapse: collapse; font-size: .9rem; }}
 td {{ padding: 6px 4px; border-bottom: 1px solid #eee; }} .num {{ text-align: right; white-space: nowrap; }}
</style></head>
<body><main>
<header><h1>{e(programme.text_in('fr', 'name'))}</h1><p>{e(programme.text_in(second, 'name'))}</p></header>
<section>
 {state}
 <p class="small">{fr['balance']} · {e(other['balance'])}</p>
 <p class="balance" id="balance">{e(format_money(page.balance_cents, programme.unit))}</p>
 <p><strong>{fr['valid_until']} {last_valid_day(voucher, 'fr')}</strong> · {e(other['valid_until'])} {last_valid_day(voucher, second)}</p>
 {qr}
 <p class="code" id="code">{e(format_code(voucher.code))}</p>
 {message}{offered}
 <p class="small">{fr['accepted']} : {e(acceptance_text(programme, 'fr'))}<br>{e(other['accepted'])}: {e(acceptance_text(programme, second))}</p>
 <h2 style="font-size:1rem">{fr['history']} · {e(other['history'])}</h2>
 <table id="history">{rows}</table>
</section></main></body></html>"""


# --- the order's ZIP, rendered once, off the request path -------------------------------------
#
# 15 to 30 ms a voucher (bench/issuance.py): minutes for a 10,000-voucher order, far too long
# for a request. The ZIP is rendered once, in a worker process (neither the server's event loop
# nor its other requests wait on it or on its hold of the GIL), into
# ``$CIRCUIT_DATA_DIR/voucher-zips/``, named after a digest of everything it prints: a revoked
# voucher's replacement or an extended expiry gives a new name, so a stale file is never
# served. One PostgreSQL advisory lock per order keeps server processes from rendering the
# same order twice; it goes with its connection if one dies.

ZIP_DIR_NAME = "voucher-zips"
ZIP_SECONDS_PER_VOUCHER = 0.03  # bench/issuance.py: 15 to 30 ms a voucher, by the machine's load
_ZIP_LOCK_SQL = "hashtextextended(:lock, 0)"  # :lock is "circuit.voucher-order-zip:<order id>"

log = structlog.get_logger("vouchers")
_renders: dict[int, asyncio.Task] = {}  # this process's renderings in flight, by order id


def zip_dir() -> Path:
    return data_dir() / ZIP_DIR_NAME


def zip_path(batch: Batch) -> Path:
    """Where the ZIP of this batch, as it is now, is kept."""
    digest = hashlib.sha256(repr(batch).encode()).hexdigest()[:32]
    return zip_dir() / f"order-{batch.vouchers[0].order_id}-{digest}.zip"


def write_order_zip(batch: Batch, path: str) -> int:
    """Render the batch's ZIP into ``path`` (readable by this user only: it holds every token
    and page secret), atomically, and drop the order's older ZIPs. Returns its size."""
    target = Path(path)
    target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    order_id = batch.vouchers[0].order_id
    for abandoned in target.parent.glob(f".order-{order_id}-*.part"):  # a worker killed mid-way (the lock is ours)
        abandoned.unlink(missing_ok=True)
    partial = target.with_name(f".{target.name}.{os.getpid()}.part")
    with os.fdopen(os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as out:
        _write_zip(batch, out)
    os.replace(partial, target)
    for older in target.parent.glob(f"order-{order_id}-*.zip"):
        if older != target:
            older.unlink(missing_ok=True)
    return target.stat().st_size


def zip_wait_s(batch: Batch) -> int:
    """A fair time to wait before asking again for a ZIP being rendered."""
    return min(60, max(1, math.ceil(len(batch.vouchers) * ZIP_SECONDS_PER_VOUCHER)))


# The worker: a fresh Python process that unpickles the batch and writes the ZIP. A process
# per rendering, not a pool: a server stopping kills it (a pool's atexit would wait minutes for
# the rendering to end), and the next request starts it again.
_WORKER = (
    "import pickle, sys\n"
    "sys.path[:0] = pickle.load(sys.stdin.buffer)\n"
    "from ledger.voucher_print import write_order_zip\n"
    "print(write_order_zip(*pickle.load(sys.stdin.buffer)))\n"
)
_one_worker = asyncio.Semaphore(1)  # one rendering at a time per server process: it takes a whole core


async def _render_in_worker(batch: Batch, path: Path) -> int:
    worker = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _WORKER, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    try:
        out, err = await worker.communicate(pickle.dumps(sys.path) + pickle.dumps((batch, str(path))))
    finally:
        if worker.returncode is None:  # cancelled: the server is stopping
            worker.kill()
            await worker.wait()
    if worker.returncode != 0:
        raise RuntimeError(f"the ZIP worker exited with {worker.returncode}: {err.decode(errors='replace')[-2000:]}")
    return int(out)


async def _render(engine: AsyncEngine, order_id: int) -> None:
    lock = f"circuit.voucher-order-zip:{order_id}"
    # Waiting for its turn holds no connection and no lock: another process may render it meanwhile.
    async with _one_worker, engine.connect() as conn:
        if not await conn.scalar(text(f"SELECT pg_try_advisory_lock({_ZIP_LOCK_SQL})"), {"lock": lock}):
            return  # another server process is rendering it
        try:
            batch = await load_order_batch(conn, order_id)
            await conn.commit()  # no transaction left open while the worker renders; the lock is the session's
            path = zip_path(batch)
            if path.exists():
                return
            started = time.perf_counter()
            size = await _render_in_worker(batch, path)
            log.info("voucher_zip_rendered", order_id=order_id, vouchers=len(batch.vouchers), bytes=size,
                     seconds=round(time.perf_counter() - started, 2))
        finally:
            await conn.execute(text(f"SELECT pg_advisory_unlock({_ZIP_LOCK_SQL})"), {"lock": lock})
            await conn.commit()


def start_rendering(engine: AsyncEngine, order_id: int) -> None:
    """Render the order's ZIP in the background, unless this process is already at it."""
    if order_id in _renders:
        return
    task = asyncio.get_running_loop().create_task(_render(engine, order_id))
    _renders[order_id] = task

    def finished(done: asyncio.Task) -> None:
        _renders.pop(order_id, None)
        if not done.cancelled() and done.exception() is not None:
            log.error("voucher_zip_failed", order_id=order_id, error=repr(done.exception()))

    task.add_done_callback(finished)


async def rendered_zip(engine: AsyncEngine, order_id: int) -> tuple[Path | None, int]:
    """The order's ZIP if rendered for the order as it is now (else None, having started its
    rendering), and how long to wait before asking again. ``order_not_issued`` before issue."""
    async with engine.connect() as conn:
        batch = await load_order_batch(conn, order_id)
    path = zip_path(batch)
    if path.exists():
        return path, 0
    start_rendering(engine, order_id)
    return None, zip_wait_s(batch)


async def renders_finished() -> None:
    """Wait for this process's renderings in flight to end (however they end)."""
    await asyncio.gather(*_renders.values(), return_exceptions=True)
