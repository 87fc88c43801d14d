"""The README's wallets tour, run as written against `circuit serve --demo` in its own process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx

from test_wallets_browser import wallet_port

ROOT = Path(__file__).resolve().parent.parent
WEBHOOK_SECRET = "tour-webhook-secret-123"  # as the README says to start the service


def tour() -> str:
    readme = (ROOT / "README.md").read_text()
    section = readme.index("## Wallets")
    start = readme.index("```sh\n", section) + len("```sh\n")
    return readme[start:readme.index("```\n", start)]


def test_the_readme_wallets_tour_runs_as_written(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    env.update(CIRCUIT_DATA_DIR=str(tmp_path / "data"), PYTHONPATH=str(ROOT), CIRCUIT_TOPUP_WEBHOOK_SECRET=WEBHOOK_SECRET)
    port = wallet_port()
    log = (tmp_path / "serve.log").open("w")
    server = subprocess.Popen([sys.executable, "-m", "api.cli", "serve", "--port", str(port), "--demo"], cwd=ROOT,
                              env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 180  # a loaded shared machine can take a while to migrate and seed
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert server.poll() is None and time.monotonic() < deadline, "circuit serve did not come up"
            time.sleep(0.2)
        script = (tour().replace("127.0.0.1:8000", f"127.0.0.1:{port}")
                  .replace(".venv/bin/python", sys.executable)
                  .replace(".venv/bin/circuit", f"{sys.executable} -m api.cli"))
        result = subprocess.run(["bash", "-e", "-c", script], cwd=ROOT, env=env, capture_output=True, text=True,
                                timeout=300)
        assert result.returncode == 0, result.stdout + result.stderr + (tmp_path / "serve.log").read_text()[-2000:]
        lines = result.stdout.splitlines()
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()
    credited, paid, used, topped_up, replayed, over, history, town, check = lines
    assert "transfer_id" in json.loads(credited)
    assert json.loads(paid)["amount_cents"] == 1250 and json.loads(paid)["unit"] == "BUL"
    assert (used, topped_up, replayed) == ("wallet_code_used", "paid", "webhook_replayed")
    assert json.loads(over)["code"] == "wallet_limit_exceeded" and json.loads(over)["limit_cents"] == 15000
    assert [(h["kind"], h["amount_cents"]) for h in json.loads(history)] == [
        ("issue", 2000), ("wallet.payment", -1250), ("counter.credit", 4000)]
    assert json.loads(town)["total_cents"] == 1500
    assert check.startswith("OK: ")
