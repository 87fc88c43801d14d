"""Shop staff: owners enrol a TOTP factor first, cashiers, device sessions, lockouts."""

from __future__ import annotations

import io
import uuid

import httpx
import pyotp
import zxingcpp
from PIL import Image
from sqlalchemy import text

import api.throttle
from api.app import create_app
from api.auth import create_user
from fixtures_merchants import OWNER_PASSWORD

CASHIER_PASSWORD = "cashier-password-1"


async def _login(client, email: str, password: str, code: str | None = None, label: str = "") -> httpx.Response:
    body = {"email": email, "password": password, "device_label": label}
    if code:
        body["totp_code"] = code
    return await client.post("/auth/login", json=body)


def _bearer(response: httpx.Response) -> dict[str, str]:
    assert response.status_code == 200, response.text
    return {"Authorization": f"Bearer {response.json()['token']}"}


async def test_owner_must_enrol_totp_before_using_the_shop_account(client, engine, approved_merchant):
    shop = await approved_merchant()
    email = f"new-owner-{uuid.uuid4().hex[:6]}@shop.test"
    async with engine.begin() as conn:
        await create_user(conn, email=email, password=OWNER_PASSWORD, role="merchant_owner", merchant_id=shop.id)
    headers = _bearer(await _login(client, email, OWNER_PASSWORD))

    me = (await client.get("/merchant/me", headers=headers)).json()
    assert me["totp_required"] is True and me["totp_enrolled"] is False
    blocked = await client.get("/merchant/staff", headers=headers)
    assert blocked.status_code == 403 and blocked.json()["code"] == "totp_setup_required"

    setup = (await client.post("/merchant/totp/setup", json={}, headers=headers)).json()
    assert setup["provisioning_uri"].startswith("otpauth://totp/Circuit:")
    png = await client.get("/merchant/totp/qr.png", headers=headers)
    assert png.headers["content-type"] == "image/png"
    decoded = zxingcpp.read_barcodes(Image.open(io.BytesIO(png.content)))
    assert [d.text for d in decoded] == [setup["provisioning_uri"]]

    wrong = await client.post("/merchant/totp/confirm", json={"code": "000000"}, headers=headers)
    assert wrong.status_code == 422 and wrong.json()["code"] == "bad_totp"
    code = pyotp.TOTP(setup["secret"]).now()
    confirmed = await client.post("/merchant/totp/confirm", json={"code": code}, headers=headers)
    assert confirmed.json()["totp_enrolled"] is True
    assert (await client.get("/merchant/staff", headers=headers)).status_code == 200

    again = await _login(client, email, OWNER_PASSWORD)
    assert again.status_code == 401 and again.json()["code"] == "totp_required"
    assert (await _login(client, email, OWNER_PASSWORD, pyotp.TOTP(setup["secret"]).now())).status_code == 200

    replace = await client.post("/merchant/totp/setup", json={}, headers=headers)
    assert replace.status_code == 403  # replacing a factor needs a code from the current one


async def test_owner_adds_a_cashier_sees_devices_and_revokes_one(client, approved_merchant):
    shop = await approved_merchant()
    email = f"cashier-{uuid.uuid4().hex[:6]}@shop.test"
    added = await client.post("/merchant/staff", json={"email": email, "password": CASHIER_PASSWORD}, headers=shop.headers)
    assert added.status_code == 201 and added.json()["role"] == "merchant_cashier"
    cashier = _bearer(await _login(client, email, CASHIER_PASSWORD, label="Caisse 2 (Android)"))

    assert (await client.get("/merchant/me", headers=cashier)).json()["totp_required"] is False
    denied = await client.get("/merchant/sessions", headers=cashier)
    assert denied.status_code == 403 and denied.json()["code"] == "owner_only"

    sessions = (await client.get("/merchant/sessions", headers=shop.headers)).json()
    by_label = {s["label"]: s for s in sessions}
    assert by_label["Caisse 2 (Android)"]["email"] == email
    assert sum(s["current"] for s in sessions) == 1

    revoked = await client.post(f"/merchant/sessions/{by_label['Caisse 2 (Android)']['id']}/revoke", headers=shop.headers)
    assert revoked.status_code == 200
    assert (await client.get("/merchant/me", headers=cashier)).status_code == 401


async def test_an_owner_cannot_revoke_another_shops_session(client, approved_merchant):
    mine, theirs = await approved_merchant(), await approved_merchant()
    their_sessions = (await client.get("/merchant/sessions", headers=theirs.headers)).json()
    response = await client.post(f"/merchant/sessions/{their_sessions[0]['id']}/revoke", headers=mine.headers)
    assert response.status_code == 404
    assert (await client.get("/merchant/me", headers=theirs.headers)).status_code == 200


async def test_disabled_cashier_is_signed_out_everywhere(client, approved_merchant):
    shop = await approved_merchant()
    email = f"cashier-{uuid.uuid4().hex[:6]}@shop.test"
    user_id = (await client.post("/merchant/staff", json={"email": email, "password": CASHIER_PASSWORD},
                                 headers=shop.headers)).json()["user_id"]
    cashier = _bearer(await _login(client, email, CASHIER_PASSWORD))
    assert (await client.post(f"/merchant/staff/{user_id}/disable", headers=shop.headers)).json()["disabled_at"]
    assert (await client.get("/merchant/me", headers=cashier)).status_code == 401
    assert (await _login(client, email, CASHIER_PASSWORD)).status_code == 401


async def test_repeated_failures_lock_the_email_for_every_server_process(client, engine, approved_merchant):
    shop = await approved_merchant()
    for _ in range(api.throttle.LOGIN_FAILURES_MAX):
        wrong = await _login(client, shop.owner_email, "not the password")
        assert wrong.json()["code"] == "bad_credentials"
    # A second app (another server process would be the same: the lock is in the database).
    other = httpx.AsyncClient(transport=httpx.ASGITransport(app=create_app(engine=engine, background=False)),
                              base_url="http://other.test")
    async with other:
        locked = await _login(other, shop.owner_email, OWNER_PASSWORD, pyotp.TOTP(shop.totp_secret).now())
    assert locked.status_code == 429 and locked.json()["code"] == "login_locked"
    assert locked.json()["retry_after_s"] > 60
    async with engine.begin() as conn:  # the lock ends with time
        await conn.execute(text("UPDATE auth_throttle SET locked_until = now() WHERE key = :key"),
                           {"key": f"login:email:{shop.owner_email}"})
    assert (await _login(client, shop.owner_email, OWNER_PASSWORD, pyotp.TOTP(shop.totp_secret).now())).status_code == 200


async def test_a_wrong_totp_code_counts_as_a_failure(client, approved_merchant):
    shop = await approved_merchant()
    for _ in range(api.throttle.LOGIN_FAILURES_MAX):
        wrong = await _login(client, shop.owner_email, OWNER_PASSWORD, "123456")
        assert wrong.json()["code"] in ("bad_totp",)
    locked = await _login(client, shop.owner_email, OWNER_PASSWORD, pyotp.TOTP(shop.totp_secret).now())
    assert locked.json()["code"] == "login_locked"


async def test_logins_from_one_address_are_rate_limited(client, engine, approved_merchant, monkeypatch):
    shop = await approved_merchant()
    async with engine.begin() as conn:  # a fresh window for this test's address
        await conn.execute(text("DELETE FROM auth_throttle WHERE key LIKE 'login:ip:%'"))
    monkeypatch.setattr(api.throttle, "LOGINS_PER_IP_PER_MINUTE", 3)
    codes = [(await _login(client, shop.owner_email, "wrong password!")).json()["code"] for _ in range(4)]
    assert codes == ["bad_credentials"] * 3 + ["rate_limited"]


async def test_stale_counters_are_forgotten_but_running_locks_are_kept(engine):
    async with engine.begin() as conn:
        await conn.execute(text(
            "INSERT INTO auth_throttle (key, window_start, hits, failures, locked_until) VALUES "
            "('test:old', now() - interval '2 days', 3, 0, NULL), "
            "('test:old-locked', now() - interval '2 days', 0, 0, now() + interval '5 minutes'), "
            "('test:recent', now() - interval '1 hour', 3, 2, NULL)"))
        assert await api.throttle.forget_stale(conn) >= 1
        left = set((await conn.execute(text("SELECT key FROM auth_throttle WHERE key LIKE 'test:%'"))).scalars())
    assert left == {"test:old-locked", "test:recent"}
