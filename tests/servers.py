"""Real server processes for the tests that need one (README tours, browser tests).

One way to start them: the command in its own process on a free port, ready once ``/health``
answers 200 and the process is still alive (a server that could not bind its port exits, and
the ``/health`` that answered was someone else's: it is started again on another port), and
stopped when the test is done. Its output goes to a log file that failures quote.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
CIRCUIT = [sys.executable, "-m", "api.cli"]
SERVE_DEMO = [*CIRCUIT, "serve", "--demo"]
UVICORN = [sys.executable, "-m", "uvicorn", "--factory", "api.app:create_app", "--host", "127.0.0.1",
           "--log-level", "warning"]
START_S_MAX = 240  # a loaded machine can take a while to migrate and seed the demo
ATTEMPTS_MAX = 5


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def embedded_env(data_dir: Path, **settings: str) -> dict[str, str]:
    """This environment on the embedded database in ``data_dir`` (never the tests' DATABASE_URL)."""
    env = {key: value for key, value in os.environ.items() if key != "DATABASE_URL"}
    env.update(CIRCUIT_DATA_DIR=str(data_dir), PYTHONPATH=str(ROOT), **settings)
    return env


def readme_block(heading: str) -> str:
    """The first ``sh`` block after the README heading that starts with ``heading``."""
    readme = (ROOT / "README.md").read_text()
    start = readme.index("```sh\n", readme.index(f"\n## {heading}")) + len("```sh\n")
    return readme[start:readme.index("```\n", start)]


def _log_tail(log: Path) -> str:
    return log.read_text(errors="replace")[-3000:] if log.exists() else ""


@contextmanager
def running(command: list[str], env: dict[str, str], log: Path) -> Iterator[str]:
    """``command --port P`` running on a free port; yields its base URL."""
    for _ in range(ATTEMPTS_MAX):
        port = free_port()
        with log.open("ab") as output:
            process = subprocess.Popen([*command, "--port", str(port)], cwd=ROOT, env=env,
                                       stdout=output, stderr=subprocess.STDOUT)
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + START_S_MAX
        try:
            while process.poll() is None and time.monotonic() < deadline:
                try:
                    if httpx.get(f"{base}/health", timeout=5).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                time.sleep(0.2)
            time.sleep(0.3)
            if process.poll() is None:
                if time.monotonic() >= deadline:
                    raise AssertionError(f"{command} did not come up in {START_S_MAX} s:\n{_log_tail(log)}")
                yield base
                return
        finally:
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    process.kill()
    raise AssertionError(f"{command} exited {ATTEMPTS_MAX} times before serving:\n{_log_tail(log)}")
