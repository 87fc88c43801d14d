"""A voucher's life after issue, through HTTP: the public key set, the public balance enquiry
(rate-limited, revealing only balance and expiry), the holder's page, revoke and reissue,
extension, expiry into breakage, and the operator's statistics."""

from __future__ import annotations

from datetime import date, timedelta

import pytest
from sqlalchemy import text

from api.features import vouchers as feature
from fixtures_vouchers import audit_events
from ledger.programmes import PARIS
from ledger.tokens import format_code, verify_token
from ledger.transfers import Posting, transfer
from ledger.vouchers import check_usable, expire_due, voucher_for_token


def _keys(body: dict) -> dict[str, bytes]:
    return {k["key_id"]: bytes.fromhex(k["public_key"]) for k in body["keys"]}


@pytest.fixture(autouse=True)
def fresh_rate_limit():
    feature._balance_limiter.seen.clear()


async def _spend(engine, account_id: int, amount_cents: int, key: str) -> None:
    async with engine.begin() as conn:
        merchant = await conn.scalar(text(
            "INSERT INTO accounts (kind, unit, floor_cents) VALUES ('merchant', 'EUR', 0) RETURNING id"))
        await transfer(conn, key=key, kind="voucher.redeem",
                       postings=[Posting(account_id, -amount_cents), Posting(merchant, amount_cents)])


async def test_the_key_set_is_public_and_verifies_tokens(client, issue_voucher):
    issued = await issue_voucher(2000)
    response = await client.get("/.well-known/circuit-voucher-keys.json")
    assert response.status_code == 200
    assert verify_token(issued.token, _keys(response.json())).voucher_id == issued.id


async def test_the_balance_enquiry_reveals_only_balance_and_expiry(client, engine, issue_voucher):
    issued = await issue_voucher(4000, beneficiary_name="Secret Person")
    await _spend(engine, issued.account_id, 1500, f"spend-{issued.id}")
    response = await client.post("/public/vouchers/balance", json={"code": format_code(issued.code).lower()})
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"balance_cents", "unit", "expires_at", "valid_until", "status"}
    assert (body["balance_cents"], body["unit"], body["status"]) == (2500, "EUR", "active")
    assert "Secret Person" not in response.text
    typo = issued.code[:5] + ("X" if issued.code[5] != "X" else "Y") + issued.code[6:]
    assert (await client.post("/public/vouchers/balance", json={"code": typo})).json()["code"] == "code_check_failed"


async def test_the_balance_enquiry_is_rate_limited(client, issue_voucher):
    issued = await issue_voucher(1000)
    statuses = [(await client.post("/public/vouchers/balance", json={"code": issued.code})).status_code
                for _ in range(feature.BALANCE_REQUESTS_PER_MINUTE + 2)]
    assert statuses[:feature.BALANCE_REQUESTS_PER_MINUTE] == [200] * feature.BALANCE_REQUESTS_PER_MINUTE
    assert statuses[-2:] == [429, 429]
    refused = await client.post("/public/vouchers/balance", json={"code": issued.code})
    assert refused.json()["code"] == "rate_limited" and refused.json()["retry_after_s"] > 0


async def test_the_holder_page_shows_qr_balance_expiry_and_history(client, engine, issue_voucher):
    issued = await issue_voucher(3000)
    await _spend(engine, issued.account_id, 1250, f"page-spend-{issued.id}")
    page = await client.get(f"/v/{issued.page_secret}")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert page.headers["cache-control"] == "no-store"
    html = page.text
    assert 'name="viewport"' in html and format_code(issued.code) in html
    assert "17,50 €" in html and "-12,50 €" in html  # balance, and the spending in the history
    last_day = (issued.expires_at.astimezone(PARIS) - timedelta(seconds=1)).date()
    assert last_day.strftime("%d/%m/%Y") in html
    qr = await client.get(f"/v/{issued.page_secret}/qr.png")
    assert qr.status_code == 200 and qr.content.startswith(b"\x89PNG")
    assert (await client.get("/v/not-a-real-secret-at-all-123")).status_code == 404


async def test_a_lost_voucher_is_revoked_over_http_and_its_old_token_refused(client, operator, engine, issue_voucher):
    issued = await issue_voucher(5000)
    await _spend(engine, issued.account_id, 2000, f"revoke-spend-{issued.id}")
    response = await client.post(f"/vouchers/{issued.id}/revoke", headers=operator, json={"reason": "lost on the bus"})
    assert response.status_code == 200, response.text
    replacement = response.json()["replacement"]
    assert response.json()["revoked"]["status"] == "revoked" and replacement["balance_cents"] == 3000
    async with engine.connect() as conn:
        with pytest.raises(Exception) as refused:
            check_usable(await voucher_for_token(conn, issued.token))
        check_usable(await voucher_for_token(conn, replacement["token"]))
    assert refused.value.code == "revoked"
    enquiry = await client.post("/public/vouchers/balance", json={"code": issued.code})
    assert enquiry.json()["status"] == "revoked" and enquiry.json()["balance_cents"] == 0
    again = await client.post(f"/vouchers/{issued.id}/revoke", headers=operator, json={"reason": "twice"})
    assert again.status_code == 409 and again.json()["code"] == "revoked"


async def test_the_operator_extends_validity_with_an_audit_event(client, operator, engine, issue_voucher):
    issued = await issue_voucher(1000)
    new_last_day = date.today() + timedelta(days=800)
    response = await client.post(f"/vouchers/{issued.id}/extend", headers=operator,
                                 json={"valid_until": new_last_day.isoformat()})
    assert response.status_code == 200, response.text
    keys = _keys((await client.get("/.well-known/circuit-voucher-keys.json")).json())
    claims = verify_token(response.json()["token"], keys)
    assert (claims.expires_at.astimezone(PARIS) - timedelta(seconds=1)).date() == new_last_day
    async with engine.connect() as conn:
        events = [e for e in await audit_events(conn, "voucher.validity_extended") if e["voucher_id"] == issued.id]
    assert len(events) == 1
    earlier = await client.post(f"/vouchers/{issued.id}/extend", headers=operator,
                                json={"valid_until": date.today().isoformat()})
    assert earlier.status_code == 409 and earlier.json()["code"] == "not_extendable"


async def test_statistics_follow_sales_spending_and_expiry(client, operator, engine, make_programme, issue_voucher):
    programme = await make_programme()
    spent = await issue_voucher(5000, programme=programme)
    lapsed = await issue_voucher(2000, programme=programme)
    await issue_voucher(1000, programme=programme)
    await _spend(engine, spent.account_id, 1200, f"stats-spend-{spent.id}")
    async with engine.begin() as conn:
        await conn.execute(text("UPDATE vouchers SET expires_at = now() - interval '1 day' WHERE id = :id"),
                           {"id": lapsed.id})
        await expire_due(conn)
    response = await client.get(f"/programmes/{programme.id}/statistics", headers=operator)
    assert response.status_code == 200, response.text
    stats = response.json()
    assert (stats["sold_cents"], stats["issued_count"], stats["issued_cents"]) == (8000, 3, 8000)
    assert (stats["redeemed_cents"], stats["expired_count"], stats["expired_cents"]) == (1200, 1, 2000)
    assert (stats["outstanding_count"], stats["outstanding_cents"]) == (2, 3800 + 1000)
    assert stats["sold_cents"] == stats["redeemed_cents"] + stats["expired_cents"] + stats["outstanding_cents"]


async def test_the_expiry_endpoint_moves_balances_to_breakage(client, operator, engine, make_programme, issue_voucher):
    programme = await make_programme()
    lapsed = await issue_voucher(700, programme=programme)
    async with engine.begin() as conn:
        await conn.execute(text("UPDATE vouchers SET expires_at = now() - interval '1 minute' WHERE id = :id"),
                           {"id": lapsed.id})
    response = await client.post("/vouchers/expire", headers=operator)
    assert response.status_code == 200 and response.json()["vouchers"] >= 1
    async with engine.connect() as conn:
        breakage = await conn.scalar(text("SELECT balance_cents FROM accounts WHERE id = :id"),
                                     {"id": programme.breakage_account_id})
        events = [e for e in await audit_events(conn, "vouchers.expired") if lapsed.id in e["voucher_ids"]]
    assert breakage == 700 and len(events) == 1
