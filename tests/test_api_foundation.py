"""The HTTP surface of the foundation: health, docs, sign-in, roles, the ledger API, and
refusals as problem details with a stable code."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from api.auth import create_user, issue_token
from ledger.accounts import ensure_unit

PROBLEM = "application/problem+json"


@pytest.fixture(scope="module")
async def bulle(engine):
    async with engine.begin() as conn:
        await ensure_unit(conn, "BUL", "Bulle")


async def _open(client, operator, kind: str) -> int:
    response = await client.post("/ledger/accounts", json={"kind": kind, "unit": "BUL"}, headers=operator)
    assert response.status_code == 201, response.text
    return response.json()["id"]


async def test_health_says_database_and_migrations_are_current(client):
    response = await client.get("/health")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "database": "ok", "migrations": "current"}


async def test_openapi_31_spec_and_interactive_docs_are_served(client):
    spec = (await client.get("/schema/openapi.json")).json()
    assert spec["openapi"].startswith("3.1")
    assert "/ledger/transfers" in spec["paths"]
    assert (await client.get("/schema")).status_code == 200


async def test_every_response_carries_a_request_id(client):
    response = await client.get("/health", headers={"X-Request-ID": "trace-me-42"})
    assert response.headers["x-request-id"] == "trace-me-42"
    assert len((await client.get("/health")).headers["x-request-id"]) == 32


async def test_wrong_password_is_refused_without_saying_which_part_was_wrong(client, engine):
    async with engine.begin() as conn:
        await create_user(conn, email="someone@circuit.test", password="a long password", role="auditor")
    wrong = await client.post("/auth/login", json={"email": "someone@circuit.test", "password": "nope"})
    unknown = await client.post("/auth/login", json={"email": "nobody@circuit.test", "password": "nope"})
    for response in (wrong, unknown):
        assert response.status_code == 401
        assert response.headers["content-type"].startswith(PROBLEM)
        assert response.json()["code"] == "bad_credentials"


async def test_a_user_with_a_second_factor_needs_the_current_code(client, engine):
    import pyotp

    secret = pyotp.random_base32()
    async with engine.begin() as conn:
        await create_user(conn, email="owner@shop.test", password="a long password", role="merchant_owner",
                          totp_secret=secret)
    missing = await client.post("/auth/login", json={"email": "owner@shop.test", "password": "a long password"})
    assert missing.json()["code"] == "totp_required"
    wrong = await client.post("/auth/login", json={"email": "owner@shop.test", "password": "a long password",
                                                   "totp_code": "000000" if pyotp.TOTP(secret).now() != "000000" else "111111"})
    assert wrong.json()["code"] == "bad_totp"
    good = await client.post("/auth/login", json={"email": "owner@shop.test", "password": "a long password",
                                                  "totp_code": pyotp.TOTP(secret).now()})
    assert good.status_code == 200 and good.json()["role"] == "merchant_owner"


async def test_no_token_is_401_and_the_wrong_role_is_403(client, engine):
    assert (await client.get("/ledger/accounts/1")).json()["code"] == "unauthenticated"
    async with engine.begin() as conn:
        user_id = await create_user(conn, email="auditor@circuit.test", password="a long password", role="auditor")
        token, _ = await issue_token(conn, user_id=user_id)
    response = await client.get("/ledger/accounts/1", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 403 and response.json()["code"] == "forbidden"


async def test_signing_out_revokes_the_token(client, engine):
    async with engine.begin() as conn:
        user_id = await create_user(conn, email="leaver@circuit.test", password="a long password", role="operator")
        token, _ = await issue_token(conn, user_id=user_id)
    headers = {"Authorization": f"Bearer {token}"}
    assert (await client.get("/auth/me", headers=headers)).json()["email"] == "leaver@circuit.test"
    assert (await client.post("/auth/logout", headers=headers)).status_code == 204
    assert (await client.get("/auth/me", headers=headers)).status_code == 401


async def test_transfer_over_http_is_idempotent_by_header(client, operator, bulle):
    float_id, wallet = await _open(client, operator, "issuer_float"), await _open(client, operator, "wallet")
    body = {"kind": "issue", "postings": [{"account_id": float_id, "amount_cents": -5000},
                                          {"account_id": wallet, "amount_cents": 5000}],
            "metadata": {"channel": "counter"}}
    first = await client.post("/ledger/transfers", json=body, headers={**operator, "Idempotency-Key": "http-1"})
    again = await client.post("/ledger/transfers", json=body, headers={**operator, "Idempotency-Key": "http-1"})
    assert (first.status_code, again.status_code) == (201, 200)
    assert first.json() == again.json()
    account = (await client.get(f"/ledger/accounts/{wallet}", headers=operator)).json()
    assert account["balance_cents"] == 5000

    body["postings"][0]["amount_cents"], body["postings"][1]["amount_cents"] = -6000, 6000
    conflict = await client.post("/ledger/transfers", json=body, headers={**operator, "Idempotency-Key": "http-1"})
    assert conflict.status_code == 409 and conflict.json()["code"] == "idempotency_conflict"


async def test_writes_without_an_idempotency_key_are_refused(client, operator, bulle):
    response = await client.post("/ledger/transfers", headers=operator, json={
        "kind": "issue", "postings": [{"account_id": 1, "amount_cents": -1}, {"account_id": 2, "amount_cents": 1}]})
    assert response.status_code == 400 and response.json()["code"] == "idempotency_key_required"


@pytest.mark.parametrize(
    "body",
    [
        "not json at all",
        {"kind": "issue"},
        {"kind": "Issue!", "postings": []},
        {"kind": "issue", "postings": [{"account_id": 1, "amount_cents": 1.5}, {"account_id": 2, "amount_cents": -1.5}]},
        {"kind": "issue", "postings": [{"account_id": "one", "amount_cents": 1}, {"account_id": 2, "amount_cents": -1}]},
        {"kind": "issue", "postings": [{"account_id": 1, "amount_cents": 10**20}, {"account_id": 2, "amount_cents": -1}]},
        {"kind": "issue", "postings": [{"account_id": 1, "amount_cents": 1}, {"account_id": 2, "amount_cents": -1}],
         "surprise": True},
    ],
    ids=["not_json", "no_postings", "bad_kind", "float_amount", "string_id", "huge_amount", "unknown_field"],
)
async def test_malformed_bodies_get_400_problem_details_and_change_nothing(client, operator, bulle, body):
    kwargs = {"content": body} if isinstance(body, str) else {"json": body}
    response = await client.post("/ledger/transfers", headers={**operator, "Idempotency-Key": "malformed",
                                                              "Content-Type": "application/json"}, **kwargs)
    assert response.status_code == 400, response.text
    assert response.headers["content-type"].startswith(PROBLEM)
    assert response.json()["code"] == "invalid_request"
    assert (await client.get("/ledger/transfers/1", headers=operator)).json()["key"] != "malformed"


async def test_domain_refusals_map_to_status_and_code(client, operator, bulle):
    wallet, other = await _open(client, operator, "wallet"), await _open(client, operator, "wallet")
    overdraw = await client.post("/ledger/transfers", headers={**operator, "Idempotency-Key": "overdraw"}, json={
        "kind": "payment", "postings": [{"account_id": wallet, "amount_cents": -1},
                                        {"account_id": other, "amount_cents": 1}]})
    assert overdraw.status_code == 409
    assert overdraw.json()["code"] == "insufficient_funds" and overdraw.json()["available_cents"] == 0
    missing = await client.get("/ledger/accounts/99999999", headers=operator)
    assert missing.status_code == 404 and missing.json()["code"] == "account_not_found"
    unbalanced = await client.post("/ledger/transfers", headers={**operator, "Idempotency-Key": "unbalanced"}, json={
        "kind": "payment", "postings": [{"account_id": wallet, "amount_cents": -1},
                                        {"account_id": other, "amount_cents": 2}]})
    assert unbalanced.status_code == 422 and unbalanced.json()["code"] == "unbalanced_transfer"


async def test_hold_post_void_and_reverse_over_http(client, operator, bulle):
    float_id, wallet, shop = [await _open(client, operator, k) for k in ("issuer_float", "wallet", "merchant")]
    fund = await client.post("/ledger/transfers", headers={**operator, "Idempotency-Key": f"fund-{wallet}"}, json={
        "kind": "issue", "postings": [{"account_id": float_id, "amount_cents": -3000},
                                      {"account_id": wallet, "amount_cents": 3000}]})
    expires = (datetime.now(timezone.utc) + timedelta(minutes=10)).isoformat()
    held = await client.post("/ledger/holds", headers={**operator, "Idempotency-Key": f"hold-{wallet}"}, json={
        "kind": "payment", "expires_at": expires,
        "postings": [{"account_id": wallet, "amount_cents": -2000}, {"account_id": shop, "amount_cents": 2000}]})
    assert held.status_code == 201 and held.json()["phase"] == "pending"
    balance = (await client.get(f"/ledger/accounts/{wallet}/balance", headers=operator)).json()
    assert (balance["balance_cents"], balance["available_cents"]) == (3000, 1000)

    posted = await client.post(f"/ledger/holds/{held.json()['id']}/post", json={"amount_cents": 1500},
                               headers={**operator, "Idempotency-Key": f"post-{wallet}"})
    assert posted.status_code == 201 and posted.json()["phase"] == "post_pending"
    voided = await client.post(f"/ledger/holds/{held.json()['id']}/void",
                               headers={**operator, "Idempotency-Key": f"void-{wallet}"})
    assert voided.status_code == 409 and voided.json()["code"] == "hold_not_pending"

    undo = await client.post(f"/ledger/transfers/{fund.json()['id']}/reverse", json={"reason": "typo"},
                             headers={**operator, "Idempotency-Key": f"undo-{wallet}"})
    assert undo.status_code == 409 and undo.json()["code"] == "insufficient_funds"
    undo = await client.post(f"/ledger/transfers/{posted.json()['id']}/reverse", json={"reason": "refund"},
                             headers={**operator, "Idempotency-Key": f"undo-post-{wallet}"})
    assert undo.status_code == 201 and undo.json()["reverses_id"] == posted.json()["id"]
    assert (await client.get(f"/ledger/accounts/{wallet}", headers=operator)).json()["balance_cents"] == 3000


def test_every_error_code_has_one_http_status_across_capabilities():
    from api.errors import _status_by_code

    _status_by_code.cache_clear()
    statuses = _status_by_code()
    assert statuses["not_found"] == 404 and statuses["insufficient_funds"] == 409


def test_a_serving_process_freezes_what_its_start_up_built_and_a_test_app_does_not():
    # In a child process: freezing is for a process that serves one app until it stops.
    import subprocess
    import sys
    from pathlib import Path

    script = """
import asyncio, gc
from litestar.testing import AsyncTestClient
from api.app import create_app
from ledger.database import create_engine

async def frozen(**kwargs):
    async with AsyncTestClient(create_app(background=False, **kwargs)):
        count = gc.get_freeze_count()
    gc.unfreeze()
    return count

url = "postgresql+asyncpg://nobody@127.0.0.1:9/none"  # never connected to: no request is made
print(asyncio.run(frozen(url=url)), asyncio.run(frozen(engine=create_engine(url))))
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).resolve().parent.parent)
    assert done.returncode == 0, done.stderr[-2000:]
    serving, test_app = map(int, done.stdout.split()[-2:])
    assert serving > 50_000  # modules, routes, the engine: what start-up built
    assert test_app == 0
