"""The README's settlement tour, run as written against `circuit serve --demo` in its own process."""

from __future__ import annotations

import os
import random
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent


def tour() -> str:
    readme = (ROOT / "README.md").read_text()
    section = readme.index("## Settlement: paying the shops")
    start = readme.index("```sh\n", section) + len("```sh\n")
    return readme[start:readme.index("```\n", start)]


def start_server(env: dict[str, str], log: Path) -> tuple[subprocess.Popen, int]:
    """`circuit serve --demo` on a port of the settlement capability's range (8300-8399).

    Another run of this test (another worktree) may take the same port at the same moment: a
    server that cannot bind exits, and is then tried again on another port, so the tour never
    runs against someone else's server."""
    deadline = time.monotonic() + 240  # a loaded shared machine can take a while to migrate and seed
    for port in random.sample(range(8300, 8400), 100):
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
        server = subprocess.Popen([sys.executable, "-m", "api.cli", "serve", "--port", str(port), "--demo"],
                                  cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=log.open("a"))
        while server.poll() is None and time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        time.sleep(0.5)
        if server.poll() is None:
            return server, port
    raise AssertionError("circuit serve did not come up: " + log.read_text()[-2000:])


def test_the_readme_settlement_tour_runs_as_written(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    env.update(CIRCUIT_DATA_DIR=str(tmp_path / "data"), PYTHONPATH=str(ROOT),
               PATH=f"{Path(sys.executable).parent}:{env.get('PATH', '')}")
    server, port = start_server(env, tmp_path / "serve.log")
    try:
        script = (tour().replace("127.0.0.1:8000", f"127.0.0.1:{port}")
                  .replace("/tmp/circuit-", f"{tmp_path}/circuit-")
                  .replace(".venv/bin/circuit", f"{sys.executable} -m api.cli"))
        result = subprocess.run(["bash", "-e", "-c", script], cwd=ROOT, env=env, capture_output=True, text=True,
                                timeout=300)
        assert result.returncode == 0, result.stdout + result.stderr + (tmp_path / "serve.log").read_text()[-2000:]
        lines = result.stdout.splitlines()
    finally:
        server.terminate()
        server.wait(timeout=30)
    assert "4 reconversion 1 200 bp" in lines
    assert "201" in lines and "same_approver" in lines and "approved" in lines
    assert any(line.startswith("draft {'gross_cents'") for line in lines)
    assert any(line.startswith("exported [") and "pain.001" in line for line in lines)
    assert any("<NbOfTxs>3</NbOfTxs>" in line for line in lines)
    assert any(line.startswith("total,,,") for line in lines) and "%PDF-1.3" in lines
    assert lines[-2].endswith(": paid") and lines[-1].startswith("OK: ")
