"""A voucher's life after issue, through HTTP: the public key set, the public balance enquiry
(rate-limited, revealing only balance and expiry), the holder's page, revoke and reissue,
extension, expiry into breakage, and the operator's statistics."""

from __future__ import annotations

import asyncio
from datetime import date, timedelta

import httpx
import pytest
from sqlalchemy import text

from api.app import create_app
from api.features import vouchers as feature
from api.routes import vouchers as routes
from fixtures_vouchers import audit_events
from ledger.programmes import PARIS
from ledger.tokens import format_code, verify_token
from ledger.transfers import Posting, transfer
from ledger.vouchers import check_usable, expire_due, voucher_for_token


def _keys(body: dict) -> dict[str, bytes]:
    return {k["key_id"]: bytes.fromhex(k["public_key"]) for k in body["keys"]}


@pytest.fixture(autouse=True)
async def fresh_rate_limit(engine):
    async with engine.begin() as conn:  # each test starts a new window for the test client's address
        await conn.execute(text("DELETE FROM auth_throttle WHERE key LIKE :prefix"),
                           {"prefix": routes.BALANCE_KEY_PREFIX + "%"})


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
                for _ in range(routes.BALANCE_REQUESTS_PER_MINUTE + 2)]
    assert statuses[:routes.BALANCE_REQUESTS_PER_MINUTE] == [200] * routes.BALANCE_REQUESTS_PER_MINUTE
    assert statuses[-2:] == [429, 429]
    refused = await client.post("/public/vouchers/balance", json={"code": issued.code})
    assert refused.json()["code"] == "rate_limited" and refused.json()["retry_after_s"] > 0


async def test_the_balance_enquiry_limit_holds_across_server_processes(client, engine, issue_voucher):
    issued = await issue_voucher(1000)
    half = routes.BALANCE_REQUESTS_PER_MINUTE // 2
    # A second app on the same database (another serve worker or process would be the same).
    other = httpx.AsyncClient(transport=httpx.ASGITransport(app=create_app(engine=engine, background=False)),
                              base_url="http://other.test")
    async with other:
        statuses = []
        for index in range(routes.BALANCE_REQUESTS_PER_MINUTE):
            app = client if index < half else other
            statuses.append((await app.post("/public/vouchers/balance", json={"code": issued.code})).status_code)
        assert statuses == [200] * routes.BALANCE_REQUESTS_PER_MINUTE
        refused = [await app.post("/public/vouchers/balance", json={"code": issued.code}) for app in (client, other)]
        assert [r.json()["code"] for r in refused] == ["rate_limited", "rate_limited"]
        async with engine.begin() as conn:  # the window ends with time, for every process
            await conn.execute(text("UPDATE auth_throttle SET window_start = now() - interval '61 seconds' "
                                    "WHERE key LIKE :prefix"), {"prefix": routes.BALANCE_KEY_PREFIX + "%"})
        assert (await other.post("/public/vouchers/balance", json={"code": issued.code})).status_code == 200


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
    old_page = (await client.get(f"/v/{issued.page_secret}")).text
    assert "Révoqué" in old_page and 'class="qr"' not in old_page
    assert 'class="qr"' in (await client.get(replacement["page_path"])).text
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


async def test_circuit_vouchers_expire_moves_what_is_left(database_url, engine, make_programme, issue_voucher):
    import os
    import subprocess
    import sys
    from pathlib import Path

    programme = await make_programme()
    lapsed = await issue_voucher(1100, programme=programme)
    async with engine.begin() as conn:
        await conn.execute(text("UPDATE vouchers SET expires_at = now() - interval '1 hour' WHERE id = :id"),
                           {"id": lapsed.id})
    root = Path(__file__).resolve().parent.parent
    result = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "api.cli", "vouchers", "expire"], cwd=root, capture_output=True,
        text=True, timeout=120, env={**os.environ, "DATABASE_URL": database_url, "PYTHONPATH": str(root)})
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("expired ") and "moved to breakage" in result.stdout
    async with engine.connect() as conn:
        status = await conn.scalar(text("SELECT status FROM vouchers WHERE id = :id"), {"id": lapsed.id})
        breakage = await conn.scalar(text("SELECT balance_cents FROM accounts WHERE id = :id"),
                                     {"id": programme.breakage_account_id})
    assert status == "expired" and breakage == 1100


async def test_the_serve_job_expires_vouchers_until_stopped(engine, make_programme, issue_voucher):
    programme = await make_programme()
    lapsed = await issue_voucher(900, programme=programme)
    async with engine.begin() as conn:
        await conn.execute(text("UPDATE vouchers SET expires_at = now() - interval '1 hour' WHERE id = :id"),
                           {"id": lapsed.id})
    stop = asyncio.Event()
    job = asyncio.create_task(feature.expiry_job(engine, stop))
    for _ in range(100):
        async with engine.connect() as conn:
            if await conn.scalar(text("SELECT status FROM vouchers WHERE id = :id"), {"id": lapsed.id}) == "expired":
                break
        await asyncio.sleep(0.05)
    stop.set()
    await asyncio.wait_for(job, timeout=5)
    async with engine.connect() as conn:
        assert await conn.scalar(text("SELECT status FROM vouchers WHERE id = :id"), {"id": lapsed.id}) == "expired"


async def test_a_rotated_key_signs_new_tokens_and_old_ones_still_verify(client, operator, issue_voucher):
    before = await issue_voucher(1000)
    rotated = await client.post("/vouchers/keys/rotate", headers=operator)
    assert rotated.status_code == 200
    after = await issue_voucher(1000)
    key_set = (await client.get("/.well-known/circuit-voucher-keys.json")).json()["keys"]
    keys = _keys({"keys": key_set})
    old, new = verify_token(before.token, keys), verify_token(after.token, keys)
    assert new.key_id == rotated.json()["active_key_id"] != old.key_id
    assert [k["retired_at"] is None for k in key_set].count(True) == 1


async def test_concurrent_spending_never_takes_a_voucher_below_zero(engine, issue_voucher):
    from ledger.errors import InsufficientFunds

    issued = await issue_voucher(10_000)
    async with engine.begin() as conn:
        merchant = await conn.scalar(text(
            "INSERT INTO accounts (kind, unit, floor_cents) VALUES ('merchant', 'EUR', 0) RETURNING id"))

    async def spend(n: int) -> bool:
        try:
            async with engine.begin() as conn:
                await transfer(conn, key=f"race-{issued.id}-{n}", kind="voucher.redeem",
                               postings=[Posting(issued.account_id, -3_000), Posting(merchant, 3_000)])
            return True
        except InsufficientFunds:
            return False

    outcomes = await asyncio.gather(*(spend(n) for n in range(12)))
    assert outcomes.count(True) == 3
    async with engine.connect() as conn:
        assert await conn.scalar(text("SELECT balance_cents FROM accounts WHERE id = :id"),
                                 {"id": issued.account_id}) == 1_000


async def test_operator_downloads_a_single_voucher_pdf(client, operator, issue_voucher):
    issued = await issue_voucher(4200)
    response = await client.get(f"/vouchers/{issued.id}/voucher.pdf", headers=operator)
    assert response.status_code == 200 and response.content.startswith(b"%PDF")
    assert f'filename="voucher-{issued.code}.pdf"' in response.headers["content-disposition"]


async def test_the_operator_changes_programme_rules_over_http_with_an_audit_event(client, operator, engine, make_programme):
    programme = await make_programme(validity_months=12)
    changed = await client.patch(f"/programmes/{programme.id}", headers=operator, json={
        "valid_until": (date.today() + timedelta(days=400)).isoformat(), "second_language": "eu",
        "texts": {"fr": {"name": "Chèque cadeau"}, "eu": {"name": "Opari txekea"}},
        "categories_excluded": ["supermarket"]})
    assert changed.status_code == 200, changed.text
    body = changed.json()
    assert (body["validity_months"], body["second_language"], body["texts"]["eu"]["name"]) == (None, "eu", "Opari txekea")
    listed = (await client.get("/programmes", headers=operator)).json()
    assert programme.id in [p["id"] for p in listed]
    async with engine.connect() as conn:
        (event,) = [e for e in await audit_events(conn, "programme.changed") if e["programme_id"] == programme.id]
    assert event["changes"]["validity_months"] == {"before": 12, "after": None}
    assert event["changes"]["second_language"] == {"before": "en", "after": "eu"}
    refused = await client.patch(f"/programmes/{programme.id}", headers=operator, json={"second_language": "fr"})
    assert refused.status_code == 422 and refused.json()["code"] == "invalid_programme_rules"
    assert refused.json()["field"] == "second_language"
