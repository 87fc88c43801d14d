"""Refunds (who, until when, once, to which voucher) and the shop's own numbers."""

from __future__ import annotations

import csv
import io
import uuid
from datetime import date, datetime, timedelta, timezone

from sqlalchemy import text

from api.auth import create_user
from ledger import merchants, redemptions, takings
from ledger.accounts import AccountKind, open_account
from ledger.transfers import Posting, transfer
from ledger.vouchers import revoke_and_reissue
from merchant_app_api.receipts import receipt_signing_key

CASHIER_PASSWORD = "cashier-password-1"


def _key() -> dict[str, str]:
    return {"Idempotency-Key": uuid.uuid4().hex}


async def _balance(engine, account_id: int) -> int:
    async with engine.connect() as conn:
        return await conn.scalar(text("SELECT balance_cents FROM accounts WHERE id = :id"), {"id": account_id})


async def _redeemed(client, shop, voucher, amount_cents: int) -> dict:
    response = await client.post("/merchant/redeem", json={"token": voucher.token, "amount_cents": amount_cents},
                                 headers={**shop.headers, **_key()})
    assert response.status_code == 201, response.text
    return response.json()["receipt"]


async def _cashier(client, engine, shop) -> tuple[int, dict[str, str]]:
    email = f"cashier-{uuid.uuid4().hex[:6]}@shop.test"
    async with engine.begin() as conn:
        user_id = await create_user(conn, email=email, password=CASHIER_PASSWORD, role="merchant_cashier",
                                    merchant_id=shop.id)
    login = await client.post("/auth/login", json={"email": email, "password": CASHIER_PASSWORD})
    return user_id, {"Authorization": f"Bearer {login.json()['token']}"}


async def test_owner_refund_gives_the_amount_back_once(client, engine, approved_merchant, issue_voucher, merchant_programme):
    shop = await approved_merchant()
    voucher = await issue_voucher(4000, programme=merchant_programme)
    taken = await _redeemed(client, shop, voucher, 1500)
    key = _key()
    refund = await client.post(f"/merchant/takings/{taken['taking_id']}/refund", headers={**shop.headers, **key})
    assert refund.status_code == 201, refund.text
    receipt = refund.json()["receipt"]
    assert (receipt["kind"], receipt["amount_cents"], receipt["refund_of"], receipt["voucher_balance_after_cents"]) == (
        "refund", -1500, taken["taking_id"], 4000)
    assert await _balance(engine, voucher.account_id) == 4000
    assert await _balance(engine, shop.accounts["EUR"]) == 0
    async with engine.connect() as conn:
        row = (await conn.execute(text(
            "SELECT t.kind, t.amount_cents, t.refund_of, tr.kind FROM merchant_takings t "
            "JOIN transfers tr ON tr.id = t.transfer_id WHERE t.id = :id"), {"id": receipt["taking_id"]})).one()
    assert tuple(row) == ("refund", -1500, taken["taking_id"], "voucher.refund")

    again = await client.post(f"/merchant/takings/{taken['taking_id']}/refund", headers={**shop.headers, **key})
    assert again.status_code == 200 and again.json() == refund.json()
    twice = await client.post(f"/merchant/takings/{taken['taking_id']}/refund", headers={**shop.headers, **_key()})
    assert twice.status_code == 409 and twice.json()["code"] == "already_refunded"
    of_refund = await client.post(f"/merchant/takings/{receipt['taking_id']}/refund", headers={**shop.headers, **_key()})
    assert of_refund.status_code == 403 and of_refund.json()["reason"] == "not_a_redemption"
    assert await _balance(engine, voucher.account_id) == 4000


async def test_cashier_refunds_the_same_day_only_and_owner_within_the_window(engine, client, approved_merchant, issue_voucher, merchant_programme):
    shop = await approved_merchant()
    cashier_id, cashier = await _cashier(client, engine, shop)
    voucher = await issue_voucher(4000, programme=merchant_programme)
    key = receipt_signing_key()
    first = await _redeemed(client, shop, voucher, 500)
    second = await _redeemed(client, shop, voucher, 500)
    at = datetime.fromisoformat(first["at"].replace("Z", "+00:00"))
    tomorrow = at + timedelta(days=1)

    async def refund(taking, *, is_owner, now, user_id):
        async with engine.begin() as conn:
            return await redemptions.refund(conn, key, merchant_id=shop.id, user_id=user_id, is_owner=is_owner,
                                            taking_id=taking["taking_id"], client_key=uuid.uuid4().hex,
                                            actor="test", now=now)

    try:
        await refund(first, is_owner=False, now=tomorrow, user_id=cashier_id)
        raise AssertionError("a cashier refunded yesterday's redemption")
    except redemptions.RefundNotAllowed as refused:
        assert refused.details["reason"] == "cashier_same_day_only"
    try:
        await refund(first, is_owner=True, now=at + timedelta(days=30, minutes=1), user_id=shop.owner_id)
        raise AssertionError("the owner refunded after the window")
    except redemptions.RefundNotAllowed as refused:
        assert (refused.details["reason"], refused.details["window_days"]) == ("window_passed", 30)
    assert (await refund(first, is_owner=True, now=at + timedelta(days=29), user_id=shop.owner_id)).body["amount_cents"] == -500
    same_day = await client.post(f"/merchant/takings/{second['taking_id']}/refund", headers={**cashier, **_key()})
    assert same_day.status_code == 201 and same_day.json()["receipt"]["user_id"] == cashier_id


async def test_refund_after_revocation_goes_to_the_replacement_voucher(client, engine, approved_merchant, issue_voucher, merchant_programme):
    shop = await approved_merchant()
    voucher = await issue_voucher(3000, programme=merchant_programme)
    taken = await _redeemed(client, shop, voucher, 1000)
    async with engine.begin() as conn:
        _, replacement = await revoke_and_reissue(conn, voucher.id, reason="lost", actor="test")
    refund = await client.post(f"/merchant/takings/{taken['taking_id']}/refund", headers={**shop.headers, **_key()})
    assert refund.status_code == 201, refund.text
    assert refund.json()["receipt"]["voucher_id"] == replacement.id
    assert await _balance(engine, voucher.account_id) == 0  # never back onto the revoked voucher
    assert await _balance(engine, replacement.account_id) == 3000


async def test_no_refund_onto_a_voucher_revoked_without_replacement(client, engine, approved_merchant, issue_voucher, merchant_programme):
    shop = await approved_merchant()
    voucher = await issue_voucher(1000, programme=merchant_programme)
    taken = await _redeemed(client, shop, voucher, 1000)  # empty: revoking it makes no replacement
    async with engine.begin() as conn:
        _, replacement = await revoke_and_reissue(conn, voucher.id, reason="stolen", actor="test")
    assert replacement is None
    refused = await client.post(f"/merchant/takings/{taken['taking_id']}/refund", headers={**shop.headers, **_key()})
    assert refused.status_code == 409 and refused.json()["code"] == "revoked"
    assert await _balance(engine, voucher.account_id) == 0


async def test_refund_isolation_suspension_and_paid_out_balance(client, engine, approved_merchant, issue_voucher, merchant_programme):
    mine, theirs = await approved_merchant(), await approved_merchant()
    voucher = await issue_voucher(3000, programme=merchant_programme)
    their_taking = await _redeemed(client, theirs, voucher, 500)
    response = await client.post(f"/merchant/takings/{their_taking['taking_id']}/refund", headers={**mine.headers, **_key()})
    assert response.status_code == 404 and response.json()["code"] == "taking_not_found"

    async with engine.begin() as conn:  # the shop's balance already left (as a payout would take it)
        clearing = await open_account(conn, kind=AccountKind.CLEARING, unit="EUR", owner_type="test")
        await transfer(conn, key=f"payout-{uuid.uuid4().hex}", kind="test.payout",
                       postings=[Posting(theirs.accounts["EUR"], -500), Posting(clearing, 500)])
    short = await client.post(f"/merchant/takings/{their_taking['taking_id']}/refund", headers={**theirs.headers, **_key()})
    assert short.status_code == 409 and short.json()["code"] == "refund_exceeds_balance"

    taken = await _redeemed(client, mine, voucher, 700)
    async with engine.begin() as conn:
        await merchants.suspend(conn, mine.id, reason="inquiry", actor="test")
    suspended = await client.post(f"/merchant/takings/{taken['taking_id']}/refund", headers={**mine.headers, **_key()})
    assert suspended.status_code == 403 and suspended.json()["code"] == "merchant_suspended"


async def test_todays_takings_per_programme_list_csv_and_z_report(client, engine, approved_merchant, issue_voucher, make_programme):
    gift, culture = await make_programme(name="Cadeau"), await make_programme(name="Culture")
    shop = await approved_merchant(programme_ids=[gift.id, culture.id])
    other = await approved_merchant(programme_ids=[gift.id])
    gift_voucher = await issue_voucher(10_000, programme=gift)
    culture_voucher = await issue_voucher(5_000, programme=culture)
    ids = [(await _redeemed(client, shop, gift_voucher, amount))["taking_id"] for amount in (1000, 250, 199)]
    ids.append((await _redeemed(client, shop, culture_voucher, 1234))["taking_id"])
    refund = await client.post(f"/merchant/takings/{ids[1]}/refund", headers={**shop.headers, **_key()})
    ids.append(refund.json()["receipt"]["taking_id"])
    await _redeemed(client, other, gift_voucher, 77)

    today = (await client.get("/merchant/takings/today", headers=shop.headers)).json()
    by_programme = {t["programme_id"]: t for t in today["totals"]}
    assert (by_programme[gift.id]["redeemed_count"], by_programme[gift.id]["redeemed_cents"],
            by_programme[gift.id]["refunded_cents"], by_programme[gift.id]["net_cents"]) == (3, 1449, -250, 1199)
    assert by_programme[culture.id]["net_cents"] == 1234
    assert sorted(t["id"] for t in today["latest"]) == sorted(ids)
    assert today["closed"] is False

    pages, before = [], None
    while True:
        params = {"limit": 2, **({"before_id": before} if before else {})}
        page = (await client.get("/merchant/takings", params=params, headers=shop.headers)).json()
        pages.append([t["id"] for t in page["items"]])
        before = page["next_before_id"]
        if before is None:
            break
    assert [i for p in pages for i in p] == sorted(ids, reverse=True) and max(len(p) for p in pages) == 2
    refunded = next(t for t in today["latest"] if t["id"] == ids[1])
    assert refunded["refunded_by"] == ids[4]
    long_ago = (await client.get("/merchant/takings", params={"from": "2020-01-01", "to": "2020-01-31"},
                                 headers=shop.headers)).json()
    assert long_ago["items"] == []

    exported = await client.get("/merchant/takings.csv", headers=shop.headers)
    assert exported.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(exported.content.decode("utf-8-sig")), delimiter=";"))
    assert [int(r["id"]) for r in rows] == sorted(ids)
    assert [r["amount"] for r in rows] == ["10,00", "2,50", "1,99", "12,34", "-2,50"]

    closed = await client.post("/merchant/closures", json={}, headers=shop.headers)
    assert closed.status_code == 201, closed.text
    z = closed.json()
    assert (z["count"], z["net_cents"], z["last_taking_id"]) == (5, 1199 + 1234, max(ids))
    again = await client.post("/merchant/closures", json={}, headers=shop.headers)
    assert again.status_code == 409 and again.json()["code"] == "day_already_closed"
    late = await _redeemed(client, shop, gift_voucher, 100)
    shown = (await client.get(f"/merchant/closures/{z['business_day']}", headers=shop.headers)).json()
    assert shown["net_cents"] == z["net_cents"] and shown["late"][0]["net_cents"] == 100
    assert late["taking_id"] > z["last_taking_id"]
    tomorrow = (takings.paris_day(datetime.now(timezone.utc)) + timedelta(days=1)).isoformat()
    ahead = await client.post("/merchant/closures", json={"day": tomorrow}, headers=shop.headers)
    assert ahead.status_code == 422 and ahead.json()["code"] == "day_not_started"
    theirs = (await client.get("/merchant/takings", headers=other.headers)).json()
    assert [t["amount_cents"] for t in theirs["items"]] == [77]
    assert (await client.get(f"/merchant/closures/{z['business_day']}", headers=other.headers)).status_code == 404


def test_paris_days_have_23_and_25_hours_at_the_clock_changes():
    start, end = takings.day_bounds(date(2026, 3, 29))
    assert end - start == timedelta(hours=23)
    start, end = takings.day_bounds(date(2026, 10, 25))
    assert end - start == timedelta(hours=25)
