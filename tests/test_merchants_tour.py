"""The README's merchants tour, run as written (bash, curl) against a real `circuit serve --demo`."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parent.parent


def _free_port() -> int:
    for port in range(8240, 8280):
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port in 8240-8279")


def _tour(port: int) -> str:
    section = (ROOT / "README.md").read_text().split("## Merchants:", 1)[1].split("\n## ", 1)[0]
    return section.split("```sh\n", 1)[1].split("```", 1)[0].replace("127.0.0.1:8000", f"127.0.0.1:{port}")


@pytest.fixture(scope="module")
def demo_server(tmp_path_factory, receipt_key_file):
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    env["CIRCUIT_DATA_DIR"] = str(tmp_path_factory.mktemp("merchants-tour") / "data")
    port = _free_port()
    server = subprocess.Popen([sys.executable, "-m", "api.cli", "serve", "--port", str(port), "--demo"], cwd=ROOT,
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{base}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(server.stdout.read() if server.poll() is not None else "no health in 120 s")
            time.sleep(0.3)
        yield port
    finally:
        server.terminate()
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()


def test_the_readme_merchants_tour_runs_as_written(demo_server):
    run = subprocess.run(["bash", "-euo", "pipefail", "-c", _tour(demo_server)], cwd=ROOT, capture_output=True,
                         text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    out = run.stdout
    assert '"accepted":true' in out and '"balance_cents":5000' in out
    assert out.count("-> 201") == 1 and out.count("-> 200") == 1
    first, second = [line.rsplit(" -> ", 1)[0] for line in out.splitlines() if line.startswith('{"receipt"')]
    assert first == second  # the replay is byte for byte the first receipt
    assert '"code":"insufficient_balance"' in out and '"available_cents":3000' in out and '"detail_fr"' in out
    assert '"redeemed_cents":3250' in out  # the tour's 20.00 € and the demo's 12.50 €
    assert "20,00;2000" in out  # the CSV line
    assert "applied" in run.stderr and out.rstrip().splitlines()[-1].startswith("approved {'2': ")
