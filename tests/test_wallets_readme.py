"""The README's wallets tour, run as written against `circuit serve --demo` in its own process."""

from __future__ import annotations

import json
import subprocess
import sys

from servers import ROOT, SERVE_DEMO, embedded_env, readme_block, running

WEBHOOK_SECRET = "tour-webhook-secret-123"  # as the README says to start the service


def test_the_readme_wallets_tour_runs_as_written(tmp_path):
    env = embedded_env(tmp_path / "data", CIRCUIT_TOPUP_WEBHOOK_SECRET=WEBHOOK_SECRET)
    with running(SERVE_DEMO, env, tmp_path / "serve.log") as base:
        script = (readme_block("Wallets").replace("http://127.0.0.1:8000", base)
                  .replace(".venv/bin/python", sys.executable)
                  .replace(".venv/bin/circuit", f"{sys.executable} -m api.cli"))
        result = subprocess.run(["bash", "-e", "-c", script], cwd=ROOT, env=env, capture_output=True, text=True,
                                timeout=300)
        assert result.returncode == 0, result.stdout + result.stderr + (tmp_path / "serve.log").read_text()[-2000:]
        lines = result.stdout.splitlines()
    credited, paid, used, topped_up, replayed, over, history, town, check = lines
    assert "transfer_id" in json.loads(credited)
    assert json.loads(paid)["amount_cents"] == 1250 and json.loads(paid)["unit"] == "BUL"
    assert (used, topped_up, replayed) == ("wallet_code_used", "paid", "webhook_replayed")
    assert json.loads(over)["code"] == "wallet_limit_exceeded" and json.loads(over)["limit_cents"] == 15000
    assert [(h["kind"], h["amount_cents"]) for h in json.loads(history)] == [
        ("issue", 2000), ("wallet.payment", -1250), ("counter.credit", 4000)]
    assert json.loads(town)["total_cents"] == 1500
    assert check.startswith("OK: ")
