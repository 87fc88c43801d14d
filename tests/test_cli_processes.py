"""The real thing: `circuit` processes on one data directory share one embedded server,
the demo is seeded once, `circuit check` passes on it, and stopping leaves the data."""

from __future__ import annotations

import os
import subprocess
import time
import zipfile
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import httpx
import pytest
from sqlalchemy import text

from servers import CIRCUIT, ROOT, SERVE_DEMO, embedded_env, running


def circuit(*args: str, env: dict[str, str], check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run([*CIRCUIT, *args], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=120)
    if check:
        assert result.returncode == 0, result.stderr
    return result


@pytest.fixture(name="embedded_env")
def embedded_env_fixture(tmp_path) -> dict[str, str]:
    return embedded_env(tmp_path / "data")


def test_serve_demo_and_check_share_one_embedded_server_and_keep_the_data(embedded_env, tmp_path):
    with running(SERVE_DEMO, embedded_env, tmp_path / "serve.log") as base:
        # Other processes join the running server instead of starting a second one.
        assert "already present" in circuit("demo", env=embedded_env).stdout
        assert circuit("check", env=embedded_env).stdout.startswith("OK: ")

        login = httpx.post(f"{base}/auth/login",
                           json={"email": "operator@circuit.demo", "password": "circuit-demo-2026"})
        assert login.status_code == 200
        account = httpx.get(f"{base}/ledger/accounts/1",
                            headers={"Authorization": f"Bearer {login.json()['token']}"})
        assert account.status_code == 200 and account.json()["kind"] == "issuer_float"

        # serve's own sealer chains the demo's events, with no command run.
        auditor = httpx.post(f"{base}/auth/login", json={"email": "auditor@circuit.demo",
                                                         "password": "circuit-demo-2026"}).json()["token"]
        deadline = time.monotonic() + 60
        while (head := httpx.get(f"{base}/audit/head", headers={"Authorization": f"Bearer {auditor}"}).json())[
                "pending_events"] or head["size"] < 2:
            assert time.monotonic() < deadline, f"nothing chained the demo's events: {head}"
            time.sleep(0.2)

        # An auditor's archive of today, written beside the running server and checked offline.
        today = datetime.now(ZoneInfo("Europe/Paris")).date().isoformat()
        archive, altered = tmp_path / "audit.zip", tmp_path / "altered.zip"
        exported = circuit("audit", "export", "--from", today, "--to", today, "-o", str(archive), env=embedded_env)
        assert exported.stdout.startswith(f"wrote {archive}: records 1..") and "signed by key" in exported.stdout
        pinned = circuit("audit", "public-key", env=embedded_env).stdout.split()[-1]
        assert circuit("audit", "verify", str(archive), "--key", pinned, env=embedded_env).stdout.startswith("OK: ")
        with zipfile.ZipFile(archive) as source, zipfile.ZipFile(altered, "w") as target:
            for name in source.namelist():
                content = source.read(name)
                if name == "records.jsonl":  # the first wallet credited 90.00 instead of 50.00
                    content = content.replace(b'"BUL",5000]', b'"BUL",9000]', 1)
                target.writestr(name, content)
        refused = circuit("audit", "verify", str(altered), "--key", pinned, env=embedded_env, check=False)
        assert refused.returncode == 1 and "record 2 (line 2): content altered" in refused.stdout + refused.stderr

    pgdata = Path(embedded_env["CIRCUIT_DATA_DIR"]) / "pg"
    assert not (pgdata / "postmaster.pid").exists(), "the last process out must stop the server"
    # The next process starts it again on the same data.
    assert circuit("check", env=embedded_env).stdout.startswith("OK: ")
    assert not (pgdata / "postmaster.pid").exists()


async def test_check_exits_non_zero_naming_the_first_discrepancy(engine, database_url, tmp_path):
    from ledger.accounts import AccountKind, open_account
    from ledger.transfers import Posting, transfer

    async with engine.begin() as conn:
        source = await open_account(conn, kind=AccountKind.ISSUER_FLOAT, unit="EUR")
        target = await open_account(conn, kind=AccountKind.WALLET, unit="EUR")
        await transfer(conn, key="cli-check", kind="issue", postings=[Posting(source, -700), Posting(target, 700)])
    env = {**os.environ, "DATABASE_URL": database_url, "PYTHONPATH": str(ROOT)}
    assert circuit("check", env=env).returncode == 0

    async with engine.begin() as conn:
        await conn.execute(text("ALTER TABLE accounts DISABLE TRIGGER USER"))
        await conn.execute(text("UPDATE accounts SET balance_cents = 9999 WHERE id = :id"), {"id": target})
        await conn.execute(text("ALTER TABLE accounts ENABLE TRIGGER USER"))
    failed = circuit("check", env=env, check=False)
    assert failed.returncode == 1
    assert f"account_balance: account {target}: expected 700, found 9999" in failed.stderr
