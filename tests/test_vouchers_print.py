"""Printed vouchers: the logo (PNG, JPEG or SVG) and the colours really appear on the page,
the QR scans from the printed raster, and names outside the PDF font print legibly."""

from __future__ import annotations

import io
from datetime import datetime, timedelta, timezone

import pypdfium2
import pytest
import zxingcpp
from PIL import Image

from ledger import voucher_print
from ledger.cobranding import check_logo
from ledger.programmes import ProgrammeRules
from ledger.tokens import VoucherKey, new_code, sign_token, verify_token
from ledger.vouchers import Voucher

KEY = VoucherKey.generate()
GREEN = (0, 170, 0)
SCALE = 150 / 72  # 150 dpi
MM = 150 / 25.4  # pixels per millimetre at 150 dpi


def _programme(**overrides) -> ProgrammeRules:
    values = dict(id=7, issuer_id=1, kind="culture", name="Chèque culture", unit="EUR", float_account_id=1,
                  reserve_account_id=2, bank_account_id=3, breakage_account_id=4, face_value_min_cents=100,
                  face_value_max_cents=50_000, validity_months=12, valid_until=None, partial_redemption=False,
                  categories_allowed=("bookshop", "cinema"), categories_excluded=(), merchants_allowed=(),
                  merchants_denied=(), second_language="eu", texts={"eu": {"name": "Kultura txekea"}},
                  purchase_fee_bp=0)
    return ProgrammeRules(**{**values, **overrides})


def _voucher(voucher_id: int, name: str) -> Voucher:
    expires = datetime(2027, 12, 31, 23, tzinfo=timezone.utc)
    now = datetime.now(timezone.utc)
    return Voucher(voucher_id, 7, 100 + voucher_id, new_code(),
                   sign_token(KEY, voucher_id=voucher_id, programme_id=7, expires_at=expires), KEY.key_id, "s" * 24,
                   2500, name, None, 1, 1, 1, now, expires, "active", None, None, None, None)


def _bitmap(kind: str) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (200, 80), GREEN).save(out, format=kind)
    return out.getvalue()


SVG = (b"<svg xmlns='http://www.w3.org/2000/svg' viewBox='0 0 200 80'>"
       b"<rect width='200' height='80' fill='#00AA00'/></svg>")


def _render(pdf: bytes) -> Image.Image:
    document = pypdfium2.PdfDocument(pdf)
    return document[0].render(scale=SCALE).to_pil().convert("RGB")


@pytest.mark.parametrize("logo", [_bitmap("PNG"), _bitmap("JPEG"), SVG], ids=["png", "jpeg", "svg"])
def test_the_employer_logo_is_printed_on_the_voucher(logo):
    voucher = _voucher(1, "Ane Etxeberria")
    batch = voucher_print.Batch(_programme(), "Office", "732829320",
                                voucher_print.Branding("Employeur", "Zorionak!", "#203040", "#E0C060", check_logo(logo)),
                                (voucher,))
    page = _render(voucher_print.voucher_pdf(batch, voucher))
    # The logo box starts 4 mm into the card (10 mm margin), 2.5 mm under its top.
    x, y = int((10 + 4 + 3) * MM), int((10 + 2.5 + 3) * MM)
    assert all(abs(a - b) <= 40 for a, b in zip(page.getpixel((x, y)), GREEN)), page.getpixel((x, y))
    assert page.getpixel((int(150 * MM), int(13 * MM))) == (0x20, 0x30, 0x40)  # the band in the primary colour
    (scanned,) = [b.text for b in zxingcpp.read_barcodes(page, formats=zxingcpp.BarcodeFormat.QRCode)]
    assert verify_token(scanned, {KEY.key_id: KEY.public_bytes}).voucher_id == 1


def test_a_culture_voucher_says_where_it_is_accepted_in_both_languages():
    voucher = _voucher(2, "Łukasz Wałęsa")
    batch = voucher_print.Batch(_programme(), "Office", None, voucher_print.DEFAULT_BRANDING, (voucher,))
    document = pypdfium2.PdfDocument(voucher_print.voucher_pdf(batch, voucher))
    text = document[0].get_textpage().get_text_range()
    for expected in ("Chèque culture", "Kultura txekea", "Uniquement: bookshop, cinema", "Bakarrik: bookshop, cinema",
                     "À utiliser en une seule fois", "Lukasz Walesa", "25,00 €", "31/12/2027", "2027-12-31"):
        assert expected in text, expected


def test_an_order_pdf_holds_three_vouchers_a_page_and_each_qr_scans():
    vouchers = tuple(_voucher(i, f"Staff {i}") for i in range(1, 8))
    batch = voucher_print.Batch(_programme(), "Office", None, voucher_print.DEFAULT_BRANDING, vouchers)
    document = pypdfium2.PdfDocument(voucher_print.order_pdf(batch))
    assert len(document) == 3
    scanned = {verify_token(b.text, {KEY.key_id: KEY.public_bytes}).voucher_id
               for page in document
               for b in zxingcpp.read_barcodes(page.render(scale=SCALE).to_pil(), formats=zxingcpp.BarcodeFormat.QRCode)}
    assert scanned == set(range(1, 8))


def test_the_qr_png_scans_back_to_the_token():
    token = sign_token(KEY, voucher_id=99, programme_id=7, expires_at=datetime.now(timezone.utc) + timedelta(days=1))
    image = Image.open(io.BytesIO(voucher_print.qr_png(token)))
    (scanned,) = [b.text for b in zxingcpp.read_barcodes(image, formats=zxingcpp.BarcodeFormat.QRCode)]
    assert scanned == token
