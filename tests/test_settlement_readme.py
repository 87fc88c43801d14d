"""The README's settlement tour, run as written against `circuit serve --demo` in its own process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from servers import ROOT, SERVE_DEMO, embedded_env, readme_block, running

def test_the_readme_settlement_tour_runs_as_written(tmp_path):
    env = embedded_env(tmp_path / "data", PATH=f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}")
    with running(SERVE_DEMO, env, tmp_path / "serve.log") as base:
        script = (readme_block("Settlement: paying the shops").replace("http://127.0.0.1:8000", base)
                  .replace("/tmp/circuit-", f"{tmp_path}/circuit-")
                  .replace(".venv/bin/circuit", f"{sys.executable} -m api.cli"))
        result = subprocess.run(["bash", "-e", "-c", script], cwd=ROOT, env=env, capture_output=True, text=True,
                                timeout=300)
        assert result.returncode == 0, result.stdout + result.stderr + (tmp_path / "serve.log").read_text()[-2000:]
        lines = result.stdout.splitlines()
    assert "4 reconversion 1 200 bp" in lines
    assert "201" in lines and "same_approver" in lines and "approved" in lines
    assert any(line.startswith("draft {'gross_cents'") for line in lines)
    assert any(line.startswith("exported [") and "pain.001" in line for line in lines)
    assert any("<NbOfTxs>3</NbOfTxs>" in line for line in lines)
    assert any(line.startswith("total,,,") for line in lines) and "%PDF-1.3" in lines
    assert lines[-2].endswith(": paid") and lines[-1].startswith("OK: ")
