"""The README's merchants tour, run as written (bash, curl) against a real `circuit serve --demo`."""

from __future__ import annotations

import subprocess

import pytest

from servers import ROOT, SERVE_DEMO, embedded_env, readme_block, running

@pytest.fixture(scope="module")
def demo_server(tmp_path_factory, receipt_key_file):
    directory = tmp_path_factory.mktemp("merchants-tour")
    with running(SERVE_DEMO, embedded_env(directory / "data"), directory / "serve.log") as base:
        yield base


def test_the_readme_merchants_tour_runs_as_written(demo_server):
    run = subprocess.run(["bash", "-euo", "pipefail", "-c",
                          readme_block("Merchants:").replace("http://127.0.0.1:8000", demo_server)], cwd=ROOT, capture_output=True,
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
