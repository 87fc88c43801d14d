"""The README's first tour and its audit tour, run as written against `circuit serve --demo`."""

from __future__ import annotations

import json
import subprocess
import sys

from servers import ROOT, SERVE_DEMO, embedded_env, readme_block, running


def test_the_readme_tour_and_audit_tour_run_as_written(tmp_path):
    env = embedded_env(tmp_path / "data")
    with running(SERVE_DEMO, env, tmp_path / "serve.log") as base:
        script = "\n".join((readme_block("A five-minute tour"), readme_block("Audit:")))
        script = (script.replace("http://127.0.0.1:8000", base)
                  .replace("/tmp/", f"{tmp_path}/")
                  .replace(".venv/bin/circuit", f"{sys.executable} -m api.cli"))
        result = subprocess.run(["bash", "-c", script], cwd=ROOT, env=env, capture_output=True, text=True,
                                timeout=300)
    out = result.stdout
    lines = out.splitlines()
    wallet = json.loads(lines[0])
    assert (wallet["id"], wallet["kind"], wallet["unit"], wallet["balance_cents"]) == (13, "wallet", "BUL", 5000)
    assert lines[1].endswith(" -> 201") and lines[2].endswith(" -> 200")
    assert lines[1].split(" -> ")[0] == lines[2].split(" -> ")[0]  # the same transfer, not a second one
    assert json.loads(lines[3])["code"] == "insufficient_funds"
    assert lines[4].startswith("OK: "), out + result.stderr
    assert '"checkpoint"' in out and '"inclusion_proof"' in out, out
    exported = next(line for line in lines if line.startswith("wrote ") and "circuit-audit.zip" in line)
    assert "signed by key" in exported
    assert any(line.startswith("OK: ") and "circuit-audit.zip" in line for line in lines), out
    assert "record 2 (line 2): content altered" in out + result.stderr and "exit 1" in lines, out
    assert any(line.startswith("OK: live chain") for line in lines)
    assert lines[-1].startswith("ledger: ") and "each recorded exactly once" in lines[-1], out + result.stderr
