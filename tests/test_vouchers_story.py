"""The whole story through HTTP: an operator creates a programme, an employer uploads a CSV of
50 staff and its logo, confirms, the operator records the payment, the vouchers are issued,
the PDFs and the ZIP are produced, and every QR decodes to a token the key set verifies."""

from __future__ import annotations

import csv
import io
import zipfile

import pypdfium2
import pytest
import zxingcpp
from PIL import Image
from sqlalchemy import text

from fixtures_vouchers import audit_events, download_order_zip
from ledger.check import check_ledger
from ledger.tokens import verify_token

pytestmark = pytest.mark.usefixtures("voucher_zip_dir")

STAFF = 50
SIREN = "732829320"
SIRET = "73282932000074"


def _png_logo() -> bytes:
    image = Image.new("RGB", (240, 96), (122, 31, 43))
    for x in range(20, 220):
        for y in range(30, 66):
            image.putpixel((x, y), (232, 193, 112))
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def _staff_csv_windows_1252() -> bytes:
    """What Excel on Windows exports: semicolons, decimal commas, Windows-1252 accents."""
    rows = ["Nom;Courriel;Montant"]
    for index in range(1, STAFF + 1):
        amount = "250,00" if index == 7 else f"{50 + index % 3 * 10},00"
        rows.append(f"Hélène Lefèvre {index};helene{index}@dubois.example;{amount}")
    return ("\r\n".join(rows) + "\r\n").encode("cp1252")


def _decode_qr(image: Image.Image) -> list[str]:
    return [found.text for found in zxingcpp.read_barcodes(image, formats=zxingcpp.BarcodeFormat.QRCode)]


def _keys(key_set: dict) -> dict[str, bytes]:
    return {key["key_id"]: bytes.fromhex(key["public_key"]) for key in key_set["keys"]}


@pytest.fixture(scope="module")
async def employer_login(client, operator):
    issuer = await client.post("/issuers", json={"name": "Office de commerce du Pays", "siren": SIREN}, headers=operator)
    assert issuer.status_code == 201, issuer.text
    employer = await client.post("/employers", headers=operator, json={
        "issuer_id": issuer.json()["id"], "name": "Menuiserie Dubois", "siret": SIRET, "address": "Angoulême"})
    assert employer.status_code == 201, employer.text
    user = await client.post(f"/employers/{employer.json()['id']}/users", headers=operator,
                             json={"email": "rh@dubois.example", "password": "a long employer password"})
    assert user.status_code == 201, user.text
    login = await client.post("/auth/login", json={"email": "rh@dubois.example", "password": "a long employer password"})
    return issuer.json()["id"], employer.json()["id"], {"Authorization": f"Bearer {login.json()['token']}"}


async def test_employer_order_issues_co_branded_vouchers_that_scan(client, operator, engine, employer_login):
    issuer_id, employer_id, employer = employer_login
    programme = await client.post("/programmes", headers=operator, json={
        "issuer_id": issuer_id, "kind": "gift", "name": "Chèque cadeau Cœur de ville",
        "face_value_min_cents": 1000, "face_value_max_cents": 30000, "validity_months": 18,
        "categories_excluded": ["supermarket"], "purchase_fee_bp": 250,
        "texts": {"fr": {"name": "Chèque cadeau Cœur de ville"}, "en": {"name": "Town-centre gift voucher"}}})
    assert programme.status_code == 201, programme.text
    programme_id = programme.json()["id"]

    order = await client.post("/voucher-orders", headers=employer, json={
        "programme_id": programme_id, "event": "christmas", "event_label": "Noël 2026",
        "message": "Merci pour cette belle année !", "colour_primary": "#7a1f2b", "colour_secondary": "#E8C170"})
    assert order.status_code == 201, order.text
    order_id = order.json()["id"]
    assert order.json()["status"] == "draft" and order.json()["colour_primary"] == "#7A1F2B"

    logo = await client.put(f"/voucher-orders/{order_id}/logo", headers={**employer, "Content-Type": "image/png"},
                            content=_png_logo())
    assert logo.status_code == 200, logo.text
    assert logo.json()["logo"] == "image/png"
    uploaded = await client.put(f"/voucher-orders/{order_id}/lines.csv", headers={**employer, "Content-Type": "text/csv"},
                                content=_staff_csv_windows_1252())
    assert uploaded.status_code == 200, uploaded.text
    quote = uploaded.json()["quote"]
    face = sum(25000 if i == 7 else (50 + i % 3 * 10) * 100 for i in range(1, STAFF + 1))
    assert quote["lines_count"] == STAFF and quote["face_value_cents"] == face
    assert [w["line_nos"] for w in quote["warnings"]] == [[7]]
    assert quote["warnings"][0]["code"] == "above_urssaf_ceiling" and quote["warnings"][0]["ceiling_cents"] == 20000
    lines = (await client.get(f"/voucher-orders/{order_id}/lines", headers=employer)).json()
    assert lines[0]["beneficiary_name"] == "Hélène Lefèvre 1"

    confirmed = await client.post(f"/voucher-orders/{order_id}/confirm", headers=employer)
    assert confirmed.status_code == 200, confirmed.text
    fixed = confirmed.json()["quote"]
    fee = (face * 250 + 5000) // 10000
    assert (fixed["fee_cents"], fixed["fee_vat_cents"]) == (fee, (fee * 2000 + 5000) // 10000)
    assert fixed["total_cents"] == face + fixed["fee_cents"] + fixed["fee_vat_cents"]

    paid = await client.post(f"/voucher-orders/{order_id}/payment", headers=operator,
                             json={"amount_cents": fixed["total_cents"], "reference": "VIR DUBOIS NOEL"})
    assert paid.status_code == 200, paid.text
    assert paid.json()["status"] == "issued"

    vouchers = (await client.get(f"/voucher-orders/{order_id}/vouchers", headers=employer)).json()
    assert len(vouchers) == STAFF
    assert sorted(v["face_value_cents"] for v in vouchers) == sorted(line["amount_cents"] for line in lines)
    assert all(v["balance_cents"] == v["face_value_cents"] and v["employer_id"] == employer_id for v in vouchers)
    async with engine.connect() as conn:
        issue_transfers = await conn.scalar(text(
            "SELECT count(DISTINCT issue_transfer_id) FROM vouchers WHERE order_id = :id"), {"id": order_id})
        report = await check_ledger(conn)
        transitions = [e["order_id"] for kind in ("voucher_order.created", "voucher_order.confirmed",
                                                   "voucher_order.paid", "voucher_order.issued")
                       for e in await audit_events(conn, kind) if e["order_id"] == order_id]
    assert issue_transfers == 1, "one ledger transfer issues the whole order"
    assert report.ok, report.discrepancies
    assert transitions == [order_id] * 4

    keys = _keys((await client.get("/.well-known/circuit-voucher-keys.json")).json())
    first = vouchers[0]
    png = await client.get(f"/vouchers/{first['id']}/qr.png", headers=employer)
    assert png.headers["content-type"] == "image/png"
    (scanned,) = _decode_qr(Image.open(io.BytesIO(png.content)))
    claims = verify_token(scanned, keys)
    assert (claims.voucher_id, claims.programme_id) == (first["id"], programme_id)

    whole = await client.get(f"/voucher-orders/{order_id}/vouchers.pdf", headers=employer)
    assert whole.status_code == 200 and whole.content.startswith(b"%PDF")
    document = pypdfium2.PdfDocument(whole.content)
    assert len(document) == -(-STAFF // 3)
    page_image = document[0].render(scale=200 / 72).to_pil()
    scanned_page = _decode_qr(page_image)
    assert len(scanned_page) == 3
    assert {verify_token(token, keys).voucher_id for token in scanned_page} == {v["id"] for v in vouchers[:3]}
    page_text = document[0].get_textpage().get_text_range()
    for expected in ("Chèque cadeau Cœur de ville", "Town-centre gift voucher", first["code"], "Hélène Lefèvre 1",
                     "Merci pour cette belle année !", "Valable jusqu'au", "Valid until", "supermarket"):
        assert expected in page_text, expected

    bundle = await download_order_zip(client, order_id, employer)
    assert bundle.status_code == 200, bundle.text
    archive = zipfile.ZipFile(io.BytesIO(bundle.content))
    names = archive.namelist()
    assert "codes.csv" in names and "all-vouchers.pdf" in names
    assert len([n for n in names if n.startswith("vouchers/") and n.endswith(".pdf")]) == STAFF
    rows = list(csv.DictReader(io.StringIO(archive.read("codes.csv").decode("utf-8-sig")), delimiter=";"))
    assert {row["code"] for row in rows} == {v["code"] for v in vouchers}
    single = pypdfium2.PdfDocument(archive.read(f"vouchers/{first['id']}-{first['code'].replace('-', '')}.pdf"))
    (single_token,) = _decode_qr(single[0].render(scale=200 / 72).to_pil())
    assert verify_token(single_token, keys).voucher_id == first["id"]


async def test_the_openapi_schema_describes_the_csv_and_logo_uploads(client):
    schema = (await client.get("/schema/openapi.json")).json()
    csv_body = schema["paths"]["/voucher-orders/{order_id}/lines.csv"]["put"]["requestBody"]
    logo_body = schema["paths"]["/voucher-orders/{order_id}/logo"]["put"]["requestBody"]
    assert csv_body["required"] and logo_body["required"]
    assert set(csv_body["content"]) == {"text/csv"}
    assert set(logo_body["content"]) == {"image/png", "image/jpeg", "image/svg+xml"}
    for body, max_bytes in ((csv_body, 4 * 1024 * 1024), (logo_body, 512 * 1024)):
        for media in body["content"].values():
            assert media["schema"] == {"type": "string", "format": "binary", "maxLength": max_bytes}
    assert "Windows-1252" in csv_body["description"] and "512 KB" in logo_body["description"]
    zip_answers = schema["paths"]["/voucher-orders/{order_id}/vouchers.zip"]["get"]["responses"]
    assert "application/zip" in zip_answers["200"]["content"] and "202" in zip_answers
