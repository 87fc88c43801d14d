"""Settlement through HTTP: the operator's batch workflow, files, documents, the merchant's side."""

from __future__ import annotations

import io
import uuid
from datetime import datetime, timezone
from pathlib import Path

import pypdf
import xmlschema

from api.auth import create_user
from fixtures_settlement import PASSWORD

XSD = Path(__file__).parent / "data" / "pain.001.001.09.xsd"


async def login(client, engine, role: str, **fields) -> dict[str, str]:
    email = f"{role}-{uuid.uuid4().hex[:8]}@api.test"
    async with engine.begin() as conn:
        await create_user(conn, email=email, password=PASSWORD, role=role, **fields)
    response = await client.post("/auth/login", json={"email": email, "password": PASSWORD})
    assert response.status_code == 200, response.text
    return {"Authorization": f"Bearer {response.json()['token']}"}


async def test_operator_prepares_a_second_person_approves_exports_and_the_merchant_reads_its_statement(
        client, engine, settlement_scheme):
    scheme = await settlement_scheme()
    operator = await login(client, engine, "operator", issuer_id=scheme.issuer_id)
    approver = await login(client, engine, "approver", issuer_id=scheme.issuer_id)
    for programme_id, kind, rate in ((scheme.gift.id, "takings", 790), (scheme.bulle.id, "takings", 0),
                                     (scheme.bulle.id, "reconversion", 500)):
        response = await client.post("/settlement/fee-rules", headers=operator, json={
            "issuer_id": scheme.issuer_id, "programme_id": programme_id, "kind": kind, "rate_bp": rate})
        assert response.status_code == 201, response.text
    clash = await client.post("/settlement/fee-rules", headers=operator, json={
        "issuer_id": scheme.issuer_id, "programme_id": scheme.gift.id, "rate_bp": 500})
    assert (clash.status_code, clash.json()["code"]) == (409, "fee_rule_conflict")
    assert clash.json()["detail_fr"].startswith("Une autre règle")

    foreign = await client.post("/settlement/fee-rules", headers=operator, json={
        "issuer_id": scheme.issuer_id, "programme_id": 10**9, "rate_bp": 500})
    assert (foreign.status_code, foreign.json()["code"]) == (422, "invalid_fee_rule")
    assert "detail_fr" in foreign.json()

    merchant_id = await scheme.merchant()
    await scheme.take(merchant_id, scheme.gift, 25_000, datetime(2026, 11, 12, tzinfo=timezone.utc))
    await scheme.take(merchant_id, scheme.bulle, 5_000, datetime(2026, 11, 13, tzinfo=timezone.utc))

    bad = await client.post("/settlement/batches", headers=operator, json={"issuer_id": scheme.issuer_id,
                                                                         "period": "2026-13"})
    assert (bad.status_code, bad.json()["code"]) == (422, "invalid_period")
    created = await client.post("/settlement/batches", headers=operator,
                                json={"issuer_id": scheme.issuer_id, "period": "2026-11"})
    assert created.status_code == 201, created.text
    batch = created.json()
    assert batch["status"] == "draft" and batch["totals"]["payout_cents"] == 25_000 - 1_975 - 395
    again = await client.post("/settlement/batches", headers=operator,
                              json={"issuer_id": scheme.issuer_id, "period": "2026-11"})
    assert (again.status_code, again.json()["id"]) == (200, batch["id"])

    same = await client.post(f"/settlement/batches/{batch['id']}/approve", headers=operator)
    assert (same.status_code, same.json()["code"]) == (403, "same_approver")
    early = await client.get(f"/settlement/batches/{batch['id']}/files/pain.001", headers=operator)
    assert early.status_code == 404
    approved = await client.post(f"/settlement/batches/{batch['id']}/approve", headers=approver)
    assert approved.json()["status"] == "approved"
    exported = await client.post(f"/settlement/batches/{batch['id']}/export", headers=approver)
    assert exported.json()["status"] == "exported"
    xml = await client.get(f"/settlement/batches/{batch['id']}/files/pain.001", headers=operator)
    assert xml.headers["content-type"].startswith("application/xml")
    xmlschema.XMLSchema(str(XSD)).validate(xml.text)
    csv_file = await client.get(f"/settlement/batches/{batch['id']}/files/csv", headers=operator)
    assert str(25_000 - 1_975 - 395) in csv_file.text

    other_issuer_operator = await login(client, engine, "operator", issuer_id=(await settlement_scheme()).issuer_id)
    hidden = await client.get(f"/settlement/batches/{batch['id']}", headers=other_issuer_operator)
    assert hidden.status_code == 403
    resident = await login(client, engine, "resident")
    assert (await client.get("/settlement/batches", headers=resident)).status_code == 403

    detached = await login(client, engine, "merchant_owner", issuer_id=scheme.issuer_id)
    assert (await client.get(f"/settlement/merchant/batches/{batch['id']}/statement.pdf",
                             headers=detached)).status_code == 403
    owner = await login(client, engine, "merchant_owner", issuer_id=scheme.issuer_id, merchant_id=merchant_id)
    mine = (await client.get("/settlement/merchant/batches", headers=owner)).json()
    assert [(b["batch_id"], b["payout_cents"]) for b in mine] == [(batch["id"], 25_000 - 1_975 - 395)]
    pdf = await client.get(f"/settlement/merchant/batches/{batch['id']}/statement.pdf", headers=owner)
    assert pdf.headers["content-type"] == "application/pdf"
    text_read = "".join(page.extract_text() for page in pypdf.PdfReader(io.BytesIO(pdf.content)).pages)
    assert "250,00 EUR" in text_read and "50,00 EUR" in text_read
    invoice = await client.get(f"/settlement/merchant/batches/{batch['id']}/invoice.pdf", headers=owner)
    assert invoice.status_code == 200 and invoice.content.startswith(b"%PDF")

    no_key = await client.post("/settlement/merchant/reconversions", headers=owner, json={"amount_cents": 1_000})
    assert no_key.status_code == 400
    asked = await client.post("/settlement/merchant/reconversions", headers={**owner, "Idempotency-Key": "k1"},
                              json={"amount_cents": 3_000})
    assert asked.status_code == 201, asked.text
    replay = await client.post("/settlement/merchant/reconversions", headers={**owner, "Idempotency-Key": "k1"},
                               json={"amount_cents": 3_000})
    assert (replay.status_code, replay.json()["id"]) == (200, asked.json()["id"])
    too_much = await client.post("/settlement/merchant/reconversions", headers={**owner, "Idempotency-Key": "k2"},
                                 json={"amount_cents": 3_000})
    assert (too_much.status_code, too_much.json()["code"]) == (409, "insufficient_funds")

    paid = await client.post(f"/settlement/batches/{batch['id']}/paid", headers=approver)
    assert paid.json()["status"] == "paid"
    returned = await client.post(f"/settlement/batches/{batch['id']}/payments/{merchant_id}/returned",
                                 headers=approver, json={"reason": "AC01 IBAN incorrect"})
    assert [p["status"] for p in returned.json()["payments"]] == ["returned"]
