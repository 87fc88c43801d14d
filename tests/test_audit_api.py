"""Auditors read the chain over HTTP: keys for anyone, head, proofs and archives for auditors."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from api.auth import create_user, issue_token
from api.settings import audit_signing_key
from audit.archive import verify_archive
from audit.chain import seal
from audit.merkle import leaf_hash, verify_inclusion
from ledger.accounts import AccountKind, ensure_unit, open_account
from ledger.transfers import Posting, transfer


@pytest.fixture(scope="module")
async def auditor(engine, tmp_path_factory):
    import os

    os.environ["CIRCUIT_AUDIT_KEY_FILE"] = str(tmp_path_factory.mktemp("keys") / "audit.pem")
    async with engine.begin() as conn:
        await ensure_unit(conn, "BUL", "Bulle")
        a = await open_account(conn, kind=AccountKind.ISSUER_FLOAT, unit="BUL")
        b = await open_account(conn, kind=AccountKind.WALLET, unit="BUL")
        for i in range(3):
            await transfer(conn, key=f"api-audit-{i}", kind="payment", postings=[Posting(a, -10), Posting(b, 10)])
        user_id = await create_user(conn, email="inspector@impots.test", password="a long password", role="auditor")
        token, _ = await issue_token(conn, user_id=user_id)
    async with engine.begin() as conn:
        await seal(conn, audit_signing_key(), force_checkpoint=True)
    yield {"Authorization": f"Bearer {token}"}
    del os.environ["CIRCUIT_AUDIT_KEY_FILE"]


async def test_public_keys_are_served_without_signing_in(client, auditor):
    keys = (await client.get("/.well-known/circuit-audit-keys.json")).json()["keys"]
    assert [k["public_key"] for k in keys] == [audit_signing_key().public_bytes.hex()]


async def test_an_auditor_gets_a_record_with_a_proof_that_verifies(client, auditor):
    head = (await client.get("/audit/head", headers=auditor)).json()
    assert head["size"] == 4 and head["checkpoint"]["size"] == 4
    found = (await client.get("/audit/records/2", headers=auditor)).json()
    import json

    record_hash = bytes.fromhex(json.loads(found["line"])["hash"])
    assert verify_inclusion(leaf_hash(record_hash), 1, 4, [bytes.fromhex(p) for p in found["inclusion_proof"]],
                            bytes.fromhex(json.loads(head["checkpoint"]["statement"])["root"]))
    missing = await client.get("/audit/records/99", headers=auditor)
    assert missing.status_code == 404 and missing.json()["code"] == "record_not_in_checkpoint"


async def test_an_auditor_downloads_an_archive_that_verifies_offline(client, auditor, tmp_path):
    today = datetime.now(timezone.utc).date()
    response = await client.get("/audit/archive", headers=auditor,
                                params={"from": str(today - timedelta(days=1)), "to": str(today + timedelta(days=1))})
    assert response.status_code == 200 and response.headers["content-type"] == "application/zip"
    path = tmp_path / "archive.zip"
    path.write_bytes(response.content)
    assert verify_archive(path, [audit_signing_key().public_bytes]).ok


async def test_the_auditor_role_cannot_move_money(client, auditor):
    response = await client.post("/ledger/transfers", headers={**auditor, "Idempotency-Key": "nope"},
                                 json={"kind": "payment", "postings": [{"account_id": 1, "amount_cents": -1},
                                                                       {"account_id": 2, "amount_cents": 1}]})
    assert response.status_code == 403 and response.json()["code"] == "forbidden"
    assert (await client.get("/ledger/accounts/1", headers=auditor)).status_code == 403
