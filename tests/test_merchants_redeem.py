"""Scan and redeem: preview, redemption with a signed receipt, every refusal, idempotency."""

from __future__ import annotations

import base64
import uuid
from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import text

from ledger import merchants, redemptions
from ledger.programmes import update_programme
from ledger.tokens import code_with_check, format_code
from ledger.vouchers import revoke_and_reissue

REFUSAL_CODES = ("expired", "not_accepted_here", "insufficient_balance", "revoked", "bad_signature",
                 "unknown_voucher", "merchant_suspended", "amount_invalid")


def _key() -> dict[str, str]:
    return {"Idempotency-Key": uuid.uuid4().hex}


async def _balance(engine, account_id: int) -> int:
    async with engine.connect() as conn:
        return await conn.scalar(text("SELECT balance_cents FROM accounts WHERE id = :id"), {"id": account_id})


async def _redeem(client, shop, amount_cents, *, token=None, code=None, headers=None):
    body = {"amount_cents": amount_cents, **({"token": token} if token else {}), **({"code": code} if code else {})}
    return await client.post("/merchant/redeem", json=body, headers={**shop.headers, **(headers or _key())})


def _assert_refused(response, code: str, status: int) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["code"] == code
    assert body["detail"] and body["detail_fr"] and body["detail"] != body["detail_fr"]
    return body


async def test_preview_says_what_the_voucher_is(client, approved_merchant, issue_voucher, merchant_programme):
    shop = await approved_merchant()
    voucher = await issue_voucher(2500, programme=merchant_programme)
    by_token = (await client.post("/merchant/preview", json={"token": voucher.token}, headers=shop.headers)).json()
    assert by_token["accepted"] is True and by_token["refusal"] is None
    assert (by_token["voucher_id"], by_token["programme_id"], by_token["balance_cents"], by_token["unit"]) == (
        voucher.id, merchant_programme.id, 2500, "EUR")
    assert datetime.fromisoformat(by_token["expires_at"]) == voucher.expires_at
    typed = format_code(voucher.code).lower().replace("0", "o")
    by_code = (await client.post("/merchant/preview", json={"code": typed}, headers=shop.headers)).json()
    assert by_code["voucher_id"] == voucher.id and by_code["code_hint"] == voucher.code[-4:]


async def test_partial_redemption_moves_value_and_returns_a_signed_receipt(client, engine, approved_merchant, issue_voucher, merchant_programme):
    shop = await approved_merchant()
    voucher = await issue_voucher(5000, programme=merchant_programme)
    response = await _redeem(client, shop, 1850, token=voucher.token)
    assert response.status_code == 201, response.text
    body = response.json()
    receipt = body["receipt"]
    assert (receipt["kind"], receipt["amount_cents"], receipt["voucher_balance_after_cents"], receipt["merchant_id"]) == (
        "redeem", 1850, 3150, shop.id)
    assert receipt["audit_event_id"] > 0 and receipt["transfer_id"] > 0

    keys = (await client.get("/.well-known/circuit-receipt-keys.json")).json()["keys"]
    public = bytes.fromhex(next(k["public_key"] for k in keys if k["key_id"] == body["key_id"]))
    assert redemptions.verify_receipt(receipt, body["signature"], public)
    forged = {**receipt, "amount_cents": 185}
    assert not redemptions.verify_receipt(forged, body["signature"], public)

    assert await _balance(engine, voucher.account_id) == 3150
    assert await _balance(engine, shop.accounts["EUR"]) == 1850
    async with engine.connect() as conn:
        taking = (await conn.execute(text(
            "SELECT t.kind, t.amount_cents, t.voucher_id, t.programme_id, tr.kind AS transfer_kind "
            "FROM merchant_takings t JOIN transfers tr ON tr.id = t.transfer_id WHERE t.id = :id"),
            {"id": receipt["taking_id"]})).one()
        event = (await conn.execute(text("SELECT event_type, payload FROM audit_inbox WHERE id = :id"),
                                    {"id": receipt["audit_event_id"]})).one()
    assert tuple(taking) == ("redeem", 1850, voucher.id, merchant_programme.id, "voucher.redeem")
    assert event.event_type == "voucher.redeemed" and event.payload["taking_id"] == receipt["taking_id"]

    rest = await _redeem(client, shop, 3150, code=voucher.code)
    assert rest.status_code == 201 and rest.json()["receipt"]["voucher_balance_after_cents"] == 0


async def test_same_redeem_three_times_has_one_effect_and_one_receipt(client, engine, approved_merchant, issue_voucher, merchant_programme):
    shop = await approved_merchant()
    voucher = await issue_voucher(3000, programme=merchant_programme)
    key = _key()
    answers = [await _redeem(client, shop, 1000, token=voucher.token, headers=key) for _ in range(3)]
    assert [a.status_code for a in answers] == [201, 200, 200]
    assert answers[0].json() == answers[1].json() == answers[2].json()
    assert await _balance(engine, voucher.account_id) == 2000
    async with engine.connect() as conn:
        assert await conn.scalar(text("SELECT count(*) FROM merchant_takings WHERE voucher_id = :id"), {"id": voucher.id}) == 1
    other = await _redeem(client, shop, 999, token=voucher.token, headers=key)
    assert other.status_code == 409 and other.json()["code"] == "idempotency_conflict"


async def test_a_redeem_needs_an_idempotency_key(client, approved_merchant, issue_voucher, merchant_programme):
    shop = await approved_merchant()
    voucher = await issue_voucher(1000, programme=merchant_programme)
    response = await client.post("/merchant/redeem", json={"token": voucher.token, "amount_cents": 100}, headers=shop.headers)
    assert response.status_code == 400 and response.json()["code"] == "idempotency_key_required"


async def test_refusal_expired(client, engine, approved_merchant, issue_voucher, merchant_programme):
    shop = await approved_merchant()
    voucher = await issue_voucher(1000, programme=merchant_programme)
    async with engine.begin() as conn:
        await conn.execute(text("UPDATE vouchers SET expires_at = now() - interval '1 minute' WHERE id = :id"), {"id": voucher.id})
    preview = (await client.post("/merchant/preview", json={"token": voucher.token}, headers=shop.headers)).json()
    assert preview["accepted"] is False and preview["refusal"]["code"] == "expired"
    assert preview["balance_cents"] == 1000  # the cashier still sees what it was
    _assert_refused(await _redeem(client, shop, 100, token=voucher.token), "expired", 409)


async def test_refusal_not_accepted_here(client, engine, approved_merchant, issue_voucher, make_programme, merchant_programme):
    shop = await approved_merchant()
    other_programme = await make_programme(name="Chèque culture")
    elsewhere = await issue_voucher(1000, programme=other_programme)
    body = _assert_refused(await _redeem(client, shop, 100, token=elsewhere.token), "not_accepted_here", 422)
    assert body["reason"] == "merchant_not_approved_for_programme"

    bookshops_later_excluded = await make_programme(name="Cœur de ville")
    shop2 = await approved_merchant(programme_ids=[bookshops_later_excluded.id], category="librairie")
    voucher = await issue_voucher(1000, programme=bookshops_later_excluded)
    async with engine.begin() as conn:
        await update_programme(conn, bookshops_later_excluded.id, actor="test", categories_excluded=["librairie"])
    body = _assert_refused(await _redeem(client, shop2, 100, token=voucher.token), "not_accepted_here", 422)
    assert body["reason"] == "category_excluded"


async def test_refusal_insufficient_balance_says_what_is_left(client, approved_merchant, issue_voucher, merchant_programme):
    shop = await approved_merchant()
    voucher = await issue_voucher(1000, programme=merchant_programme)
    body = _assert_refused(await _redeem(client, shop, 1001, token=voucher.token), "insufficient_balance", 409)
    assert body["available_cents"] == 1000


async def test_refusal_revoked(client, engine, approved_merchant, issue_voucher, merchant_programme):
    shop = await approved_merchant()
    voucher = await issue_voucher(1000, programme=merchant_programme)
    async with engine.begin() as conn:
        _, replacement = await revoke_and_reissue(conn, voucher.id, reason="lost", actor="test")
    body = _assert_refused(await _redeem(client, shop, 100, token=voucher.token), "revoked", 409)
    assert body["replaced_by"] == replacement.id


async def test_refusal_bad_signature(client, approved_merchant, issue_voucher, merchant_programme):
    shop = await approved_merchant()
    voucher = await issue_voucher(1000, programme=merchant_programme)
    last = voucher.token[-1]
    altered = voucher.token[:-1] + ("0" if last != "0" else "1")
    response = await _redeem(client, shop, 100, token=altered)
    if response.json()["code"] == "unknown_voucher":  # the change broke the Base45 framing: alter the body
        altered = voucher.token[:12] + ("0" if voucher.token[12] != "0" else "1") + voucher.token[13:]
        response = await _redeem(client, shop, 100, token=altered)
    _assert_refused(response, "bad_signature", 422)


async def test_refusal_unknown_voucher(client, approved_merchant):
    shop = await approved_merchant()
    nobody = format_code(code_with_check("ABCDEFGHJKM"))
    _assert_refused(await _redeem(client, shop, 100, code=nobody), "unknown_voucher", 404)
    body = _assert_refused(await _redeem(client, shop, 100, token="https://example.com/not-a-voucher"), "unknown_voucher", 404)
    assert body["reason"] == "token_malformed"
    typo = _assert_refused(await _redeem(client, shop, 100, code=nobody[:-1] + ("1" if nobody[-1] != "1" else "2")),
                           "unknown_voucher", 404)
    assert typo["reason"] == "code_check_failed"


async def test_refusal_merchant_suspended(client, engine, approved_merchant, issue_voucher, merchant_programme):
    shop = await approved_merchant()
    voucher = await issue_voucher(1000, programme=merchant_programme)
    async with engine.begin() as conn:
        await merchants.suspend(conn, shop.id, reason="unpaid fees", actor="test")
    preview = (await client.post("/merchant/preview", json={"token": voucher.token}, headers=shop.headers)).json()
    assert preview["refusal"]["code"] == "merchant_suspended"
    _assert_refused(await _redeem(client, shop, 100, token=voucher.token), "merchant_suspended", 403)
    assert await _balance(engine, voucher.account_id) == 1000


@pytest.mark.parametrize("amount", [0, -100, 12.5, "10", None, 10**16])
async def test_refusal_amount_invalid(client, approved_merchant, issue_voucher, merchant_programme, amount):
    shop = await approved_merchant()
    voucher = await issue_voucher(1000, programme=merchant_programme)
    _assert_refused(await _redeem(client, shop, amount, token=voucher.token), "amount_invalid", 422)


async def test_whole_balance_only_programme_refuses_a_partial_amount(client, approved_merchant, issue_voucher, make_programme):
    one_go = await make_programme(name="Chèque une fois", partial_redemption=False)
    shop = await approved_merchant(programme_ids=[one_go.id])
    voucher = await issue_voucher(1500, programme=one_go)
    body = _assert_refused(await _redeem(client, shop, 1000, token=voucher.token), "amount_invalid", 422)
    assert (body["reason"], body["available_cents"]) == ("whole_balance_only", 1500)
    assert (await _redeem(client, shop, 1500, token=voucher.token)).status_code == 201


def test_every_refusal_code_has_both_languages():
    from ledger.programmes import NotAcceptedHere
    from ledger.vouchers import Expired, Revoked

    classes = [redemptions.UnknownVoucher, redemptions.BadSignature, redemptions.InsufficientBalance,
               redemptions.AmountInvalid, merchants.MerchantSuspended, NotAcceptedHere, Expired, Revoked]
    assert sorted(c.code for c in classes) == sorted(REFUSAL_CODES)
    for refusal in classes:
        assert refusal.message and refusal.message_fr and refusal.message != refusal.message_fr


async def test_a_merchant_redeems_only_into_its_own_account(client, engine, approved_merchant, issue_voucher, merchant_programme):
    mine, theirs = await approved_merchant(), await approved_merchant()
    voucher = await issue_voucher(1000, programme=merchant_programme)
    smuggled = await client.post("/merchant/redeem", headers={**mine.headers, **_key()},
                                 json={"token": voucher.token, "amount_cents": 100, "merchant_id": theirs.id})
    assert smuggled.status_code == 400  # the shop is the signed-in one; no field names another
    assert (await _redeem(client, mine, 100, token=voucher.token)).status_code == 201
    assert await _balance(engine, mine.accounts["EUR"]) == 100
    assert await _balance(engine, theirs.accounts["EUR"]) == 0


async def test_a_merchant_cannot_read_another_merchants_receipt(client, approved_merchant, issue_voucher, merchant_programme):
    mine, theirs = await approved_merchant(), await approved_merchant()
    voucher = await issue_voucher(1000, programme=merchant_programme)
    taking_id = (await _redeem(client, theirs, 100, token=voucher.token)).json()["receipt"]["taking_id"]
    assert (await client.get(f"/merchant/takings/{taking_id}/receipt", headers=theirs.headers)).status_code == 200
    response = await client.get(f"/merchant/takings/{taking_id}/receipt", headers=mine.headers)
    assert response.status_code == 404 and response.json()["code"] == "taking_not_found"


async def test_an_operator_token_cannot_redeem(client, operator, issue_voucher, merchant_programme):
    voucher = await issue_voucher(1000, programme=merchant_programme)
    response = await client.post("/merchant/redeem", json={"token": voucher.token, "amount_cents": 100},
                                 headers={**operator, **_key()})
    assert response.status_code == 403


async def test_receipt_time_and_key_are_stable(client, approved_merchant, issue_voucher, merchant_programme):
    shop = await approved_merchant()
    voucher = await issue_voucher(1000, programme=merchant_programme)
    body = (await _redeem(client, shop, 100, token=voucher.token)).json()
    at = datetime.fromisoformat(body["receipt"]["at"].replace("Z", "+00:00"))
    assert abs(datetime.now(timezone.utc) - at) < timedelta(minutes=1)
    assert len(base64.urlsafe_b64decode(body["signature"] + "==")) == 64


async def test_scans_are_rate_limited_per_device(client, approved_merchant, issue_voucher, merchant_programme, monkeypatch):
    import merchant_app_api.staff

    shop = await approved_merchant()
    voucher = await issue_voucher(1000, programme=merchant_programme)
    monkeypatch.setattr(merchant_app_api.staff, "SCANS_PER_SESSION_PER_MINUTE", 3)
    answers = [await client.post("/merchant/preview", json={"token": voucher.token}, headers=shop.headers)
               for _ in range(3)]
    assert [a.status_code for a in answers] == [200, 200, 200]
    limited = await _redeem(client, shop, 100, token=voucher.token)
    assert limited.status_code == 429 and limited.json()["code"] == "rate_limited"
    assert limited.json()["retry_after_s"] >= 1 and limited.json()["detail_fr"]


async def test_refused_redemptions_count_against_the_device_limit(client, engine, approved_merchant, issue_voucher,
                                                                   merchant_programme, monkeypatch):
    """A refusal writes nothing of the redemption, yet its scan still counts, whether Python
    refused it (unknown voucher) or the database did (the ledger's floor)."""
    import merchant_app_api.staff

    shop = await approved_merchant()
    voucher = await issue_voucher(1000, programme=merchant_programme)
    monkeypatch.setattr(merchant_app_api.staff, "SCANS_PER_SESSION_PER_MINUTE", 3)
    _assert_refused(await _redeem(client, shop, 100, code="NOT-A-CODE"), "unknown_voucher", 404)
    _assert_refused(await _redeem(client, shop, 5000, token=voucher.token), "insufficient_balance", 409)
    assert (await _redeem(client, shop, 100, token=voucher.token)).status_code == 201
    _assert_refused(await _redeem(client, shop, 100, token=voucher.token), "rate_limited", 429)
    async with engine.connect() as conn:
        balance = await conn.scalar(text("SELECT balance_cents FROM accounts WHERE id = :id"), {"id": voucher.account_id})
        takings = await conn.scalar(text("SELECT count(*) FROM merchant_takings WHERE voucher_id = :id"), {"id": voucher.id})
    assert (balance, takings) == (900, 1)


async def test_an_unknown_token_leaves_no_rate_limit_row(client, engine):
    from api.auth import hash_token
    from merchant_app_api.staff import scan_limit_key

    token = f"ck_not-a-session-{uuid.uuid4().hex}"
    answer = await client.post("/merchant/redeem", json={"code": "X", "amount_cents": 1},
                               headers={"Authorization": f"Bearer {token}", "Idempotency-Key": "k"})
    assert answer.status_code == 401 and answer.json()["code"] == "unauthenticated"
    async with engine.connect() as conn:
        assert await conn.scalar(text("SELECT count(*) FROM auth_throttle WHERE key = :key"),
                                 {"key": scan_limit_key(hash_token(token))}) == 0
