"""Wallets over real HTTP: a resident opens a wallet, a shop takes a payment from its rotating
QR, a counter credits euros, the provider's webhook tops up, the town pays from a CSV."""

from __future__ import annotations

import json
import os
import time
import uuid

import pytest
from sqlalchemy import text

from ledger import rotating_codes, topups
from ledger.check import check_ledger

WEBHOOK_SECRET = "test-webhook-secret-0123456789"


@pytest.fixture(scope="module", autouse=True)
def webhook_secret():
    os.environ["CIRCUIT_TOPUP_WEBHOOK_SECRET"] = WEBHOOK_SECRET
    yield
    os.environ.pop("CIRCUIT_TOPUP_WEBHOOK_SECRET", None)


@pytest.fixture(scope="module")
async def shop(approved_merchant, bulle):
    return await approved_merchant(programme_ids=[bulle.id])


async def open_resident(client, bulle, amount_cents=0, engine=None):
    """A resident opens a wallet on the public form; funded by the town if asked."""
    response = await client.post("/wallets/open", json={
        "display_name": "Camille Martin", "email": f"c-{uuid.uuid4().hex[:8]}@example.org",
        "programme_id": bulle.id})
    assert response.status_code == 201, response.text
    opened = response.json()
    headers = {"Authorization": f"Bearer {opened['token']}"}
    if amount_cents:
        from ledger.scheme import issue
        async with engine.begin() as conn:
            await issue(conn, key=f"fund-{opened['wallet']['id']}", programme=bulle,
                        to_account_id=await conn.scalar(text("SELECT account_id FROM wallets WHERE id = :w"),
                                                        {"w": opened["wallet"]["id"]}),
                        amount_cents=amount_cents)
    me = (await client.get("/wallets/me", headers=headers)).json()
    return headers, me


def current_code(me, *, steps_back=0):
    return rotating_codes.code_for(me["wallet"]["id"], me["code"]["secret"],
                                   step=rotating_codes.step_of(time.time()) - steps_back)


async def take(client, shop, code, amount_cents, key=None):
    return await client.post("/merchant/wallet/payments", headers={**shop.headers, "Idempotency-Key": key or uuid.uuid4().hex},
                             json={"code": code, "amount_cents": amount_cents})


async def test_a_shop_takes_a_payment_from_the_residents_rotating_qr(client, engine, bulle, shop):
    headers, me = await open_resident(client, bulle, 5_000, engine)
    preview = await client.post("/merchant/wallet/preview", headers=shop.headers, json={"code": current_code(me)})
    assert preview.json() == {"programme_id": bulle.id, "programme_name": "La Bulle", "unit": "BUL"}
    paid = await take(client, shop, current_code(me), 1_250, key="sale-1")
    assert paid.status_code == 201, paid.text
    assert paid.json()["amount_cents"] == 1_250 and paid.json()["wallet_id"] == me["wallet"]["id"]
    history = (await client.get("/wallets/me/history", headers=headers)).json()
    assert history[0]["amount_cents"] == -1_250 and history[0]["merchant_name"] == "Librairie du Marché"
    assert (await client.get("/wallets/me", headers=headers)).json()["wallet"]["balance_cents"] == 3_750
    async with engine.connect() as conn:
        taking = (await conn.execute(text("SELECT kind, amount_cents, wallet_id, programme_id FROM merchant_takings "
                                          "WHERE transfer_id = :t"), {"t": paid.json()["transfer_id"]})).one()
        assert tuple(taking) == ("payment", 1_250, me["wallet"]["id"], bulle.id)
        shop_balance = await conn.scalar(text("SELECT balance_cents FROM accounts WHERE id = :a"), {"a": shop.accounts["BUL"]})
        assert shop_balance == 1_250  # no fee on payments


async def test_the_same_code_twice_is_refused_but_a_retry_returns_the_first_payment(client, engine, bulle, shop):
    headers, me = await open_resident(client, bulle, 5_000, engine)
    code = current_code(me)
    first = await take(client, shop, code, 500, key="retry-me")
    retry = await take(client, shop, code, 500, key="retry-me")
    assert (first.status_code, retry.status_code) == (201, 200)
    assert retry.json()["transfer_id"] == first.json()["transfer_id"]
    second = await take(client, shop, code, 500)
    assert second.status_code == 409 and second.json()["code"] == "wallet_code_used"
    previewed = await client.post("/merchant/wallet/preview", headers=shop.headers, json={"code": code})
    assert previewed.status_code == 409 and previewed.json()["code"] == "wallet_code_used"
    assert second.json()["detail_fr"]
    assert (await client.get("/wallets/me", headers=headers)).json()["wallet"]["balance_cents"] == 4_500


async def test_a_code_older_than_the_skew_window_or_of_another_wallet_is_refused(client, engine, bulle, shop):
    headers, me = await open_resident(client, bulle, 5_000, engine)
    _, other = await open_resident(client, bulle, 5_000, engine)
    stale = await take(client, shop, current_code(me, steps_back=2), 100)
    assert stale.status_code == 422 and stale.json()["code"] == "wallet_code_invalid"
    one_step_late = await take(client, shop, current_code(me, steps_back=1), 100)
    assert one_step_late.status_code == 201
    foreign_digits = current_code(other).rsplit(".", 1)[1]
    forged = await take(client, shop, f"CW1.{me['wallet']['id']}.{foreign_digits}", 100)
    assert forged.status_code == 422 and forged.json()["code"] == "wallet_code_invalid"
    garbage = await take(client, shop, "hello", 100)
    assert garbage.status_code == 422 and garbage.json()["code"] == "wallet_code_invalid"
    assert (await client.get("/wallets/me", headers=headers)).json()["wallet"]["balance_cents"] == 4_900


async def test_a_payment_beyond_the_balance_is_refused_and_the_code_stays_usable(client, engine, bulle, shop):
    _, me = await open_resident(client, bulle, 1_000, engine)
    code = current_code(me)
    short = await take(client, shop, code, 1_001)
    assert short.status_code == 409 and short.json()["code"] == "insufficient_funds"
    assert (await take(client, shop, code, 1_000)).status_code == 201


async def test_a_resident_pays_by_scanning_the_shops_qr(client, engine, bulle, shop):
    headers, _ = await open_resident(client, bulle, 3_000, engine)
    qr = (await client.get("/merchant/wallet/qr", params={"amount_cents": 800}, headers=shop.headers)).json()
    assert qr["payload"] == f"CM1.{shop.id}.800" and qr["png_data_url"].startswith("data:image/png;base64,")
    card = await client.get(f"/wallets/me/merchants/{shop.id}", headers=headers)
    assert card.json() == {"id": shop.id, "trade_name": "Librairie du Marché"}
    paid = await client.post("/wallets/me/payments", headers={**headers, "Idempotency-Key": "qr-1"},
                             json={"merchant_id": shop.id, "amount_cents": 800})
    assert paid.status_code == 201 and paid.json()["merchant_id"] == shop.id
    unknown = await client.post("/wallets/me/payments", headers={**headers, "Idempotency-Key": "qr-2"},
                                json={"merchant_id": 999_999, "amount_cents": 100})
    assert unknown.status_code == 422 and unknown.json()["code"] == "merchant_not_payable"


async def test_residents_transfer_units_within_their_limits(client, engine, bulle):
    alice, _ = await open_resident(client, bulle, 10_000, engine)
    bob, bob_me = await open_resident(client, bulle, 10_000, engine)
    sent = await client.post("/wallets/me/transfers", headers={**alice, "Idempotency-Key": "gift"},
                             json={"to_wallet_id": bob_me["wallet"]["id"], "amount_cents": 5_000})
    assert sent.status_code == 201
    too_much = await client.post("/wallets/me/transfers", headers={**alice, "Idempotency-Key": "gift-2"},
                                 json={"to_wallet_id": bob_me["wallet"]["id"], "amount_cents": 1})
    assert too_much.status_code == 409 and too_much.json()["code"] == "wallet_limit_exceeded"
    assert too_much.json()["limit_cents"] == 15_000 and too_much.json()["limit"] == "hold"


async def test_an_exchange_counter_credits_a_wallet_against_euros(client, engine, bulle, approved_merchant,
                                                                 merchant_programme):
    headers, me = await open_resident(client, bulle)
    counter = await approved_merchant(programme_ids=[bulle.id])
    refused = await client.post("/merchant/wallet/counter-credits", headers={**counter.headers, "Idempotency-Key": "c0"},
                                json={"wallet_id": me["wallet"]["id"], "amount_cents": 2_000, "method": "cash"})
    assert refused.status_code == 403 and refused.json()["code"] == "not_a_counter"
    async with engine.begin() as conn:
        await conn.execute(text("UPDATE merchants SET is_counter = true WHERE id = :m"), {"m": counter.id})
    credited = await client.post("/merchant/wallet/counter-credits", headers={**counter.headers, "Idempotency-Key": "c1"},
                                 json={"code": current_code(me), "amount_cents": 2_000, "method": "cash"})
    assert credited.status_code == 201, credited.text
    assert (await client.get("/wallets/me", headers=headers)).json()["wallet"]["balance_cents"] == 2_000
    elsewhere = await approved_merchant(programme_ids=[merchant_programme.id])  # a counter, not of La Bulle
    async with engine.begin() as conn:
        await conn.execute(text("UPDATE merchants SET is_counter = true WHERE id = :m"), {"m": elsewhere.id})
    foreign = await client.post("/merchant/wallet/counter-credits", headers={**elsewhere.headers, "Idempotency-Key": "c2"},
                                json={"wallet_id": me["wallet"]["id"], "amount_cents": 2_000, "method": "cash"})
    assert foreign.status_code == 403 and foreign.json()["code"] == "not_a_counter"
    async with engine.connect() as conn:
        owed = await conn.scalar(text("SELECT balance_cents FROM accounts WHERE kind = 'counter' AND owner_id = :m"),
                                 {"m": str(counter.id)})
        assert owed == -2_000
        assert (await check_ledger(conn)).ok


def signed(body: dict, *, secret=WEBHOOK_SECRET, at=None) -> tuple[bytes, dict]:
    raw = json.dumps(body).encode()
    return raw, {topups.SIGNATURE_HEADER: topups.sign(secret.encode(), int(at or time.time()), raw),
                 "Content-Type": "application/json"}


async def test_online_top_up_issues_units_only_on_a_valid_webhook(client, engine, bulle):
    headers, _ = await open_resident(client, bulle)
    intent = (await client.post("/wallets/me/topups", headers=headers, json={"amount_cents": 3_000})).json()
    assert intent["status"] == "pending"
    event = {"event_id": f"evt_{uuid.uuid4().hex}", "type": "topup.succeeded", "intent_id": intent["intent_id"],
             "amount_cents": 3_000}

    async def balance():
        return (await client.get("/wallets/me", headers=headers)).json()["wallet"]["balance_cents"]

    raw, sig = signed(event, secret="not-the-shared-secret-at-all")
    bad = await client.post("/webhooks/topups", content=raw, headers=sig)
    assert bad.status_code == 401 and bad.json()["code"] == "webhook_signature_invalid"
    raw, sig = signed(event)
    tampered = await client.post("/webhooks/topups", content=raw.replace(b"3000", b"9000"), headers=sig)
    assert tampered.json()["code"] == "webhook_signature_invalid"
    raw, sig = signed(event, at=time.time() - topups.SIGNATURE_TOLERANCE_SECONDS - 5)
    stale = await client.post("/webhooks/topups", content=raw, headers=sig)
    assert stale.status_code == 401 and stale.json()["code"] == "webhook_timestamp_stale"
    raw, sig = signed({**event, "intent_id": "ti_nobody_has_this_intent"})
    unknown = await client.post("/webhooks/topups", content=raw, headers=sig)
    assert unknown.status_code == 404 and unknown.json()["code"] == "topup_intent_not_found"
    assert await balance() == 0

    raw, sig = signed(event)
    ok = await client.post("/webhooks/topups", content=raw, headers=sig)
    assert ok.status_code == 200 and ok.json()["status"] == "paid"
    replay = await client.post("/webhooks/topups", content=raw, headers=sig)
    assert replay.status_code == 409 and replay.json()["code"] == "webhook_replayed"
    raw, sig = signed({**event, "event_id": f"evt_{uuid.uuid4().hex}"})
    again = await client.post("/webhooks/topups", content=raw, headers=sig)
    assert again.status_code == 409 and again.json()["code"] == "topup_already_paid"
    assert await balance() == 3_000
    async with engine.connect() as conn:
        assert (await check_ledger(conn)).ok


async def test_a_top_up_past_the_tier_is_refused_at_the_intent(client, bulle):
    headers, _ = await open_resident(client, bulle)
    refused = await client.post("/wallets/me/topups", headers=headers, json={"amount_cents": 15_001})
    assert refused.status_code == 409 and refused.json()["code"] == "wallet_limit_exceeded"


async def test_the_town_opens_a_campaign_and_pays_wallets_and_shops_from_csv(client, engine, bulle, shop, operator):
    tag = uuid.uuid4().hex[:6]
    csv_text = "name,email,phone,amount\n" + "".join(f"Agent {i},a{i}-{tag}@town.org,,50\n" for i in range(20))
    opened = await client.post("/wallet-admin/campaigns", params={"name": "Vaccination", "programme_id": bulle.id},
                               content=csv_text.encode(), headers={**operator, "Idempotency-Key": f"camp-{tag}",
                                                                   "Content-Type": "text/csv"})
    assert opened.status_code == 201, opened.text
    assert opened.json()["count"] == 20 and opened.json()["total_cents"] == 100_000
    async with engine.connect() as conn:
        first = await conn.scalar(text("SELECT min(id) FROM wallets WHERE campaign_id = :c"),
                                  {"c": opened.json()["campaign_id"]})
    payouts = (f"recipient_type,recipient_id,amount,label\nwallet,{first},20,allowance\n"
               f"merchant,{shop.id},120.50,hall rent\nwallet,{first + 1},10,allowance\n")
    paid = await client.post("/wallet-admin/town-payments", params={"programme_id": bulle.id}, content=payouts.encode(),
                             headers={**operator, "Idempotency-Key": f"pay-{tag}", "Content-Type": "text/csv"})
    assert paid.status_code == 201, paid.text
    assert paid.json()["total_cents"] == 15_050
    over = (f"recipient_type,recipient_id,amount,label\nwallet,{first},100,too much\n")
    refused = await client.post("/wallet-admin/town-payments", params={"programme_id": bulle.id}, content=over.encode(),
                                headers={**operator, "Idempotency-Key": f"over-{tag}", "Content-Type": "text/csv"})
    assert refused.status_code == 409 and refused.json()["code"] == "wallet_limit_exceeded"
    bad = await client.post("/wallet-admin/town-payments", params={"programme_id": bulle.id},
                            content=b"recipient_type,recipient_id,amount\nshop,1,5\n",
                            headers={**operator, "Idempotency-Key": f"bad-{tag}", "Content-Type": "text/csv"})
    assert bad.status_code == 422 and bad.json()["errors"][0]["line"] == 2
    async with engine.connect() as conn:
        balances = dict((await conn.execute(text(
            "SELECT w.id, a.balance_cents FROM wallets w JOIN accounts a ON a.id = w.account_id "
            "WHERE w.id IN (:a, :b)"), {"a": first, "b": first + 1})).all())
        assert balances == {first: 7_000, first + 1: 6_000}
        taking = await conn.scalar(text("SELECT amount_cents FROM merchant_takings WHERE transfer_id = :t"),
                                   {"t": paid.json()["transfer_id"]})
        assert taking == 12_050
        assert (await check_ledger(conn)).ok


async def test_a_shop_pays_its_supplier(client, engine, bulle, shop, approved_merchant):
    supplier = await approved_merchant(programme_ids=[bulle.id])
    short = await client.post("/merchant/wallet/supplier-payments", headers={**supplier.headers, "Idempotency-Key": "s0"},
                              json={"to_merchant_id": shop.id, "amount_cents": 100})
    assert short.status_code == 409 and short.json()["code"] == "insufficient_funds"
    paid = await client.post("/merchant/wallet/supplier-payments", headers={**shop.headers, "Idempotency-Key": "s1"},
                             json={"to_merchant_id": supplier.id, "amount_cents": 100})
    assert paid.status_code == 201 and paid.json()["wallet_id"] is None


async def test_the_operator_sets_tier_limits(client, bulle, operator):
    saved = await client.put("/wallet-admin/tiers/unverified", headers=operator,
                             json={"hold_max_cents": 15_000, "receive_month_max_cents": 25_000, "description": "default"})
    assert saved.status_code == 200
    tiers = {t["tier"]: t for t in (await client.get("/wallet-admin/tiers", headers=operator)).json()}
    assert tiers["unverified"]["hold_max_cents"] == 15_000 and "verified" in tiers
    resident, _ = await open_resident(client, bulle)
    assert (await client.get("/wallet-admin/tiers", headers=resident)).status_code == 403


async def test_a_resident_keeps_a_gift_voucher_in_the_wallet(client, engine, bulle, issue_voucher):
    headers, _ = await open_resident(client, bulle)
    other, _ = await open_resident(client, bulle)
    voucher = await issue_voucher(3_000)
    added = await client.post("/wallets/me/vouchers", headers=headers, json={"code": voucher.code.lower()})
    assert added.status_code == 201, added.text
    assert added.json()["balance_cents"] == 3_000 and added.json()["token"] == voucher.token
    again = await client.post("/wallets/me/vouchers", headers=headers, json={"code": voucher.code})
    assert again.status_code == 201
    taken = await client.post("/wallets/me/vouchers", headers=other, json={"code": voucher.code})
    assert taken.status_code == 409 and taken.json()["code"] == "voucher_in_another_wallet"
    listed = (await client.get("/wallets/me/vouchers", headers=headers)).json()
    assert [v["voucher_id"] for v in listed] == [voucher.id]
    unknown = await client.post("/wallets/me/vouchers", headers=headers, json={"code": "ZZZZ-ZZZZ-ZZZZ"})
    assert unknown.status_code in (404, 422) and unknown.json()["code"] != "internal_error"


async def test_two_tills_scanning_the_same_code_at_once_take_it_once(client, engine, bulle, shop, approved_merchant):
    import asyncio

    other_shop = await approved_merchant(programme_ids=[bulle.id])
    headers, me = await open_resident(client, bulle, 5_000, engine)
    code = current_code(me)
    first, second = await asyncio.gather(take(client, shop, code, 1_000), take(client, other_shop, code, 1_000))
    assert sorted([first.status_code, second.status_code]) == [201, 409]
    assert "wallet_code_used" in (first.text + second.text)
    assert (await client.get("/wallets/me", headers=headers)).json()["wallet"]["balance_cents"] == 4_000


async def test_the_shop_refunds_a_wallet_payment_once(client, engine, bulle, shop):
    headers, me = await open_resident(client, bulle, 5_000, engine)
    paid = (await take(client, shop, current_code(me), 1_500)).json()
    async with engine.connect() as conn:
        taking_id = await conn.scalar(text("SELECT id FROM merchant_takings WHERE transfer_id = :t"),
                                      {"t": paid["transfer_id"]})
    url = f"/merchant/wallet/payments/{taking_id}/refund"
    refunded = await client.post(url, headers={**shop.headers, "Idempotency-Key": "refund-1"})
    assert refunded.status_code == 201, refunded.text
    again = await client.post(url, headers={**shop.headers, "Idempotency-Key": "refund-2"})
    assert again.status_code == 200 and again.json()["transfer_id"] == refunded.json()["transfer_id"]
    assert (await client.get("/wallets/me", headers=headers)).json()["wallet"]["balance_cents"] == 5_000
    history = (await client.get("/wallets/me/history", headers=headers)).json()
    assert (history[0]["kind"], history[0]["amount_cents"], history[0]["merchant_name"]) == (
        "reversal", 1_500, "Librairie du Marché")
    async with engine.connect() as conn:
        rows = (await conn.execute(text("SELECT kind, amount_cents, refund_of FROM merchant_takings "
                                        "WHERE merchant_id = :m AND (id = :t OR refund_of = :t) ORDER BY id"),
                                   {"m": shop.id, "t": taking_id})).all()
        assert [tuple(r) for r in rows] == [("payment", 1_500, None), ("refund", -1_500, taking_id)]
        assert (await check_ledger(conn)).ok
    elsewhere = await client.post(url.replace(str(taking_id), str(taking_id + 10_000)),
                                  headers={**shop.headers, "Idempotency-Key": "refund-3"})
    assert elsewhere.status_code == 404 and elsewhere.json()["code"] == "taking_not_found"
