"""The bank's payment webhook: a signed notice pays and issues a confirmed order; a forged,
stale or repeated notice books nothing (more)."""

from __future__ import annotations

import hashlib
import hmac
import json
import time

import pytest
from sqlalchemy import text

from api.routes.vouchers import PAYMENTS_WEBHOOK_PATH, WEBHOOK_SECRET_ENV
from fixtures_vouchers import valid_siret

pytestmark = pytest.mark.usefixtures("voucher_zip_dir")  # issuing starts rendering the ZIP

SECRET = "a shared secret the bank knows"


def _signed(payload: dict, *, secret: str = SECRET, at: float | None = None) -> tuple[bytes, dict[str, str]]:
    body = json.dumps(payload).encode()
    stamp = str(int(at if at is not None else time.time()))
    signature = hmac.new(secret.encode(), stamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return body, {"X-Circuit-Timestamp": stamp, "X-Circuit-Signature": f"sha256={signature}",
                  "Content-Type": "application/json"}


@pytest.fixture
def webhook_secret(monkeypatch):
    monkeypatch.setenv(WEBHOOK_SECRET_ENV, SECRET)


async def _confirmed_order(engine, make_programme) -> tuple[int, int]:
    from ledger import orders
    from ledger.employers import create_employer
    from ledger.order_lines import LineIn

    programme = await make_programme(purchase_fee_bp=500)
    async with engine.begin() as conn:
        employer = await create_employer(conn, issuer_id=programme.issuer_id, name="CSE",
                                         siret=valid_siret(programme.id), actor="test")
        order = await orders.create_order(conn, employer_id=employer.id, programme_id=programme.id, event="christmas",
                                          actor="test")
        await orders.replace_lines(conn, order.id, [LineIn("Ada", None, 5000), LineIn("Bob", None, 7000)], actor="test")
        _, quote = await orders.confirm(conn, order.id, actor="test")
    return order.id, quote.total_cents


async def _payments(engine, order_id: int) -> int:
    async with engine.connect() as conn:
        return await conn.scalar(text("SELECT count(*) FROM transfers WHERE kind = 'voucher.order_payment' "
                                      "AND metadata->>'order_id' = :id"), {"id": str(order_id)})


async def test_a_signed_payment_notice_pays_and_issues_the_order_once(client, engine, make_programme, webhook_secret):
    order_id, total = await _confirmed_order(engine, make_programme)
    body, headers = _signed({"order_id": order_id, "amount_cents": total, "reference": "SEPA 123"})
    first = await client.post(PAYMENTS_WEBHOOK_PATH, content=body, headers=headers)
    assert first.status_code == 200, first.text
    assert first.json()["status"] == "issued" and first.json()["payment_reference"] == "SEPA 123"
    again = await client.post(PAYMENTS_WEBHOOK_PATH, content=body, headers=headers)
    assert again.status_code == 200 and again.json()["status"] == "issued"
    assert await _payments(engine, order_id) == 1
    async with engine.connect() as conn:
        assert await conn.scalar(text("SELECT count(*) FROM vouchers WHERE order_id = :id"), {"id": order_id}) == 2


@pytest.mark.parametrize("forge", ["secret", "stale", "tampered"])
async def test_a_forged_or_stale_notice_is_refused(client, engine, make_programme, webhook_secret, forge):
    order_id, total = await _confirmed_order(engine, make_programme)
    payload = {"order_id": order_id, "amount_cents": total, "reference": "SEPA 9"}
    body, headers = _signed(payload, secret="guessed" if forge == "secret" else SECRET,
                            at=time.time() - 3600 if forge == "stale" else None)
    if forge == "tampered":
        body = body.replace(b"SEPA 9", b"SEPA 8")
    response = await client.post(PAYMENTS_WEBHOOK_PATH, content=body, headers=headers)
    assert response.status_code == 401 and response.json()["code"] == "bad_webhook_signature"
    assert await _payments(engine, order_id) == 0


async def test_without_a_configured_secret_there_is_no_webhook(client, engine, make_programme, monkeypatch):
    monkeypatch.delenv(WEBHOOK_SECRET_ENV, raising=False)
    order_id, total = await _confirmed_order(engine, make_programme)
    body, headers = _signed({"order_id": order_id, "amount_cents": total, "reference": "SEPA 1"})
    assert (await client.post(PAYMENTS_WEBHOOK_PATH, content=body, headers=headers)).status_code == 404
    assert await _payments(engine, order_id) == 0


async def test_a_notice_for_the_wrong_amount_is_refused(client, engine, make_programme, webhook_secret):
    order_id, total = await _confirmed_order(engine, make_programme)
    body, headers = _signed({"order_id": order_id, "amount_cents": total - 1, "reference": "SEPA 2"})
    response = await client.post(PAYMENTS_WEBHOOK_PATH, content=body, headers=headers)
    assert response.status_code == 422 and response.json()["code"] == "payment_mismatch"
    assert await _payments(engine, order_id) == 0
