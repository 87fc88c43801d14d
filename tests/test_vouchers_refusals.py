"""Bad input is refused with a clear code and a French sentence, and nothing is created:
malformed CSVs, fake or oversize logos, zero, negative and over-limit amounts, wrong states."""

from __future__ import annotations

import io

import pytest
from PIL import Image
from sqlalchemy import text

pytestmark = pytest.mark.usefixtures("voucher_zip_dir")  # issuing starts rendering the ZIP

SIREN = "732829320"
SIRET = "73282932000074"
OTHER_SIRET = "35600000000048"
TABLES = ("voucher_orders", "voucher_order_lines", "vouchers", "transfers", "accounts", "employers", "programmes")


async def _counts(engine) -> dict[str, int]:
    async with engine.connect() as conn:
        return {table: await conn.scalar(text(f"SELECT count(*) FROM {table}")) for table in TABLES}


def _png(size=(64, 32)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, (10, 120, 200)).save(out, format="PNG")
    return out.getvalue()


@pytest.fixture(scope="module")
async def scheme(client, operator):
    issuer = (await client.post("/issuers", json={"name": "Office", "siren": SIREN}, headers=operator)).json()
    programme = (await client.post("/programmes", headers=operator, json={
        "issuer_id": issuer["id"], "kind": "gift", "name": "Chèque cadeau", "face_value_min_cents": 1000,
        "face_value_max_cents": 20000})).json()
    employers = []
    for siret, email in ((SIRET, "rh@one.example"), (OTHER_SIRET, "rh@two.example")):
        employer = (await client.post("/employers", headers=operator,
                                      json={"issuer_id": issuer["id"], "name": email, "siret": siret})).json()
        await client.post(f"/employers/{employer['id']}/users", headers=operator,
                          json={"email": email, "password": "a long employer password"})
        login = await client.post("/auth/login", json={"email": email, "password": "a long employer password"})
        employers.append({"Authorization": f"Bearer {login.json()['token']}"})
    return {"issuer_id": issuer["id"], "programme_id": programme["id"], "employer": employers[0], "other": employers[1]}


async def _draft(client, scheme) -> int:
    response = await client.post("/voucher-orders", headers=scheme["employer"],
                                 json={"programme_id": scheme["programme_id"], "event": "birth"})
    assert response.status_code == 201, response.text
    return response.json()["id"]


def _refused(response, status: int, code: str) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["code"] == code and body["detail"], body
    assert code == "forbidden" or body["detail_fr"], body  # the foundation's role guard speaks English only
    return body


async def test_invalid_siren_and_siret_are_refused(client, operator, engine, scheme):
    before = await _counts(engine)
    _refused(await client.post("/issuers", json={"name": "X", "siren": "732829321"}, headers=operator), 422, "invalid_siren")
    _refused(await client.post("/employers", headers=operator, json={
        "issuer_id": scheme["issuer_id"], "name": "X", "siret": "73282932000075"}), 422, "invalid_siret")
    _refused(await client.post("/employers", headers=operator, json={
        "issuer_id": scheme["issuer_id"], "name": "Again", "siret": SIRET}), 409, "employer_exists")
    assert await _counts(engine) == before


async def test_a_malformed_csv_reports_every_bad_line_and_saves_nothing(client, engine, scheme):
    order_id = await _draft(client, scheme)
    good = await client.put(f"/voucher-orders/{order_id}/lines.csv", headers=scheme["employer"],
                            content="name,email,amount\nAda,ada@example.org,50\nBob,,60.5\n".encode())
    assert good.status_code == 200 and good.json()["quote"]["lines_count"] == 2
    before = await _counts(engine)
    bad = ("name,email,amount\n"
           "Ada,ada@example.org,50\n"
           ",nobody@example.org,50\n"        # 3: no name
           "Carl,not-an-email,50\n"          # 4: bad email
           "Dina,,0\n"                       # 5: zero
           "Eve,,-20\n"                      # 6: negative
           "Fred,,5\n"                       # 7: below the programme's minimum
           "Gus,,250\n"                      # 8: above the programme's maximum
           "Hal,,fifty\n"                    # 9: not an amount
           "Ian,,50,extra\n")                # 10: a column too many
    response = await client.put(f"/voucher-orders/{order_id}/lines.csv", headers=scheme["employer"], content=bad.encode())
    body = _refused(response, 422, "order_lines_refused")
    assert [(e["line"], e["field"]) for e in body["errors"]] == [
        (3, "name"), (4, "email"), (5, "amount"), (6, "amount"), (7, "amount"), (8, "amount"), (9, "amount"), (10, "file")]
    assert all(e["reason"] and e["reason_fr"] for e in body["errors"])
    assert await _counts(engine) == before
    lines = (await client.get(f"/voucher-orders/{order_id}/lines", headers=scheme["employer"])).json()
    assert [line["beneficiary_name"] for line in lines] == ["Ada", "Bob"]


@pytest.mark.parametrize(("content", "line"), [
    (b"", 0), (b"prenom;valeur\nAda;50\n", 1), (b"\x89PNG\r\n\x1a\n\x00\x00binary", 0)])
async def test_a_file_that_is_no_order_csv_is_refused(client, engine, scheme, content, line):
    order_id = await _draft(client, scheme)
    before = await _counts(engine)
    body = _refused(await client.put(f"/voucher-orders/{order_id}/lines.csv", headers=scheme["employer"], content=content),
                    422, "order_lines_refused")
    assert body["errors"][0]["line"] == line
    assert await _counts(engine) == before


async def test_zero_negative_and_over_limit_amounts_in_json_are_refused(client, engine, scheme):
    before = await _counts(engine)
    response = await client.post("/voucher-orders", headers=scheme["employer"], json={
        "programme_id": scheme["programme_id"], "event": "christmas",
        "lines": [{"beneficiary_name": "Ada", "amount_cents": 0}, {"beneficiary_name": "Bob", "amount_cents": -500},
                  {"beneficiary_name": "Cy", "amount_cents": 20001}, {"beneficiary_name": "Di", "amount_cents": 5000}]})
    body = _refused(response, 422, "order_lines_refused")
    assert [e["line"] for e in body["errors"]] == [1, 2, 3]
    assert await _counts(engine) == before, "not even the order was created"


@pytest.mark.parametrize(("content", "status", "code"), [
    (b"GIF89a not really", 415, "logo_refused"),
    (b"just some text pretending to be a logo", 415, "logo_refused"),
    (_png()[:60], 415, "logo_refused"),  # a PNG header with the rest cut off
    (b"<svg xmlns='http://www.w3.org/2000/svg'><script>alert(1)</script></svg>", 415, "logo_refused"),
    (b"<svg xmlns='http://www.w3.org/2000/svg'><image href='https://tracker.example/x.png'/></svg>", 415, "logo_refused"),
    (b"<?xml version='1.0'?><!DOCTYPE svg [<!ENTITY x 'y'>]><svg xmlns='http://www.w3.org/2000/svg'/>", 415, "logo_refused"),
    (b"<svg xmlns='http://www.w3.org/2000/svg'><circle cx='5' cy='5' r='4'/></svg>", 415, "logo_refused"),  # no size
    (b"\x89PNG\r\n\x1a\n" + b"\x00" * (600 * 1024), 413, "logo_too_large"),
])
async def test_fake_or_oversize_logos_are_refused(client, engine, scheme, content, status, code):
    order_id = await _draft(client, scheme)
    _refused(await client.put(f"/voucher-orders/{order_id}/logo", headers=scheme["employer"], content=content), status, code)
    order = (await client.get(f"/voucher-orders/{order_id}", headers=scheme["employer"])).json()
    assert order["logo"] is None


async def test_a_real_svg_logo_and_colours_are_accepted(client, scheme):
    order_id = await _draft(client, scheme)
    svg = b"<svg xmlns='http://www.w3.org/2000/svg' viewBox='0 0 10 10'><circle cx='5' cy='5' r='4' fill='#c00'/></svg>"
    response = await client.put(f"/voucher-orders/{order_id}/logo", headers=scheme["employer"], content=svg)
    assert response.status_code == 200 and response.json()["logo"] == "image/svg+xml"
    _refused(await client.patch(f"/voucher-orders/{order_id}", headers=scheme["employer"], json={"colour_primary": "red"}),
             422, "invalid_colour")
    _refused(await client.patch(f"/voucher-orders/{order_id}", headers=scheme["employer"], json={"event": "party"}),
             422, "invalid_input")


async def test_wrong_states_are_refused_and_change_nothing(client, operator, engine, scheme):
    order_id = await _draft(client, scheme)
    employer = scheme["employer"]
    _refused(await client.post(f"/voucher-orders/{order_id}/confirm", headers=employer), 409, "order_empty")
    await client.put(f"/voucher-orders/{order_id}/lines", headers=employer,
                     json=[{"beneficiary_name": "Ada", "amount_cents": 5000}])
    before = await _counts(engine)
    _refused(await client.post(f"/voucher-orders/{order_id}/payment", headers=operator,
                               json={"amount_cents": 5000, "reference": "early"}), 409, "illegal_transition")
    _refused(await client.post(f"/voucher-orders/{order_id}/issue", headers=operator), 409, "illegal_transition")
    assert await _counts(engine) == before
    confirmed = await client.post(f"/voucher-orders/{order_id}/confirm", headers=employer)
    assert confirmed.status_code == 200
    before = await _counts(engine)
    _refused(await client.post(f"/voucher-orders/{order_id}/confirm", headers=employer), 409, "illegal_transition")
    _refused(await client.put(f"/voucher-orders/{order_id}/lines", headers=employer,
                              json=[{"beneficiary_name": "Eve", "amount_cents": 9000}]), 409, "illegal_transition")
    _refused(await client.post(f"/voucher-orders/{order_id}/payment", headers=operator,
                               json={"amount_cents": 4999, "reference": "short"}), 422, "payment_mismatch")
    _refused(await client.post(f"/voucher-orders/{order_id}/payment", headers=employer,
                               json={"amount_cents": 5000, "reference": "self-paid"}), 403, "forbidden")
    _refused(await client.get(f"/voucher-orders/{order_id}/vouchers.pdf", headers=employer), 409, "order_not_issued")
    assert await _counts(engine) == before
    paid = await client.post(f"/voucher-orders/{order_id}/payment", headers=operator,
                             json={"amount_cents": 5000, "reference": "VIR 1"})
    assert paid.json()["status"] == "issued"
    before = await _counts(engine)
    _refused(await client.post(f"/voucher-orders/{order_id}/cancel", headers=employer, json={"reason": "late"}),
             409, "illegal_transition")
    _refused(await client.post(f"/voucher-orders/{order_id}/payment", headers=operator,
                               json={"amount_cents": 5000, "reference": "VIR 1 again"}), 409, "illegal_transition")
    assert await _counts(engine) == before


async def test_a_paid_order_cancelled_before_issue_is_refunded(client, operator, engine, scheme):
    from ledger.orders import record_payment

    order_id = await _draft(client, scheme)
    await client.put(f"/voucher-orders/{order_id}/lines", headers=scheme["employer"],
                     json=[{"beneficiary_name": "Ada", "amount_cents": 5000}])
    await client.post(f"/voucher-orders/{order_id}/confirm", headers=scheme["employer"])
    async with engine.begin() as conn:  # paid, not yet issued
        await record_payment(conn, order_id, amount_cents=5000, reference="VIR 2", actor="test")
    cancelled = await client.post(f"/voucher-orders/{order_id}/cancel", headers=scheme["employer"], json={"reason": "wrong list"})
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    async with engine.connect() as conn:
        net = await conn.scalar(text(
            "SELECT sum(p.amount_cents) FROM postings p JOIN transfers t ON t.id = p.transfer_id "
            "JOIN accounts a ON a.id = p.account_id WHERE a.kind = 'reserve' AND t.metadata->>'order_id' = :id"),
            {"id": str(order_id)})
        vouchers = await conn.scalar(text("SELECT count(*) FROM vouchers WHERE order_id = :id"), {"id": order_id})
    assert net == 0 and vouchers == 0


async def test_an_employer_sees_only_its_own_orders(client, scheme):
    order_id = await _draft(client, scheme)
    _refused(await client.get(f"/voucher-orders/{order_id}", headers=scheme["other"]), 404, "not_found")
    _refused(await client.put(f"/voucher-orders/{order_id}/lines", headers=scheme["other"],
                              json=[{"beneficiary_name": "Mallory", "amount_cents": 5000}]), 404, "not_found")
    assert order_id not in [o["id"] for o in (await client.get("/voucher-orders", headers=scheme["other"])).json()]
    _refused(await client.post("/programmes", headers=scheme["employer"], json={
        "issuer_id": scheme["issuer_id"], "kind": "gift", "name": "Mine"}), 403, "forbidden")
    _refused(await client.patch(f"/programmes/{scheme['programme_id']}", headers=scheme["employer"],
                                json={"purchase_fee_bp": 0}), 403, "forbidden")
    _refused(await client.get(f"/programmes/{scheme['programme_id']}/statistics", headers=scheme["employer"]),
             403, "forbidden")
    _refused(await client.get("/employers", headers=scheme["employer"]), 403, "forbidden")
    readable = await client.get(f"/programmes/{scheme['programme_id']}", headers=scheme["employer"])
    assert readable.status_code == 200 and readable.json()["face_value_max_cents"] == 20000


def _mentions_an_account(value) -> bool:
    if isinstance(value, dict):
        return any("account" in key or _mentions_an_account(item) for key, item in value.items())
    return isinstance(value, list) and any(_mentions_an_account(item) for item in value)


async def test_employers_read_programmes_without_the_schemes_ledger_accounts(client, operator, scheme):
    path = f"/programmes/{scheme['programme_id']}"
    seen_by_operator = (await client.get(path, headers=operator)).json()
    assert set(seen_by_operator["accounts"]) == {"float", "reserve", "bank", "breakage"}
    assert isinstance(seen_by_operator["accounts"]["reserve"], int)
    seen_by_employer = await client.get(path, headers=scheme["employer"])
    assert seen_by_employer.status_code == 200
    assert seen_by_employer.json() == {k: v for k, v in seen_by_operator.items() if k != "accounts"}
    listed = (await client.get("/programmes", headers=scheme["employer"])).json()
    assert scheme["programme_id"] in [p["id"] for p in listed] and not _mentions_an_account(listed)
    assert all("accounts" in p for p in (await client.get("/programmes", headers=operator)).json())
