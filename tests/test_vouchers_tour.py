"""The README's vouchers tour, run as written against a real `circuit serve --demo`, and the
holder's page in a real Chromium at phone size, whose on-screen QR decodes to a valid token."""

from __future__ import annotations

import io
import subprocess

import httpx
import pytest
import zxingcpp
from PIL import Image

from ledger.tokens import verify_token
from servers import ROOT, SERVE_DEMO, embedded_env, readme_block, running

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync"]
PHONE = {"width": 390, "height": 844}


@pytest.fixture(scope="module")
def demo_server(tmp_path_factory):
    directory = tmp_path_factory.mktemp("vouchers-tour")
    env = embedded_env(directory / "data")
    with running(SERVE_DEMO, env, directory / "serve.log") as base:
        yield base, env


def test_the_readme_vouchers_tour_runs_as_written(demo_server):
    base, env = demo_server
    # From the project directory, as the README says: the tour calls .venv/bin/circuit.
    script = readme_block("Vouchers:").replace("http://127.0.0.1:8000", base)
    result = subprocess.run(["bash", "-e", "-o", "pipefail", "-c", script], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "'code': 'above_urssaf_ceiling'" in out and "'line_nos': [2]" in out
    assert "'line': 2, 'field': 'amount'" in out and "'line': 3, 'field': 'name'" in out
    assert "\nissued\n" in out
    assert "all-vouchers.pdf" in out and "codes.csv" in out and out.count("vouchers/") == 2
    assert '"balance_cents":8000' in out and '"status":"revoked"' in out
    assert "200 text/html" in out
    assert "OK: " in out and "every invariant holds" in out


def test_the_holder_page_fits_a_phone_and_its_qr_scans(demo_server):
    from playwright.sync_api import sync_playwright

    base, _ = demo_server
    login = httpx.post(f"{base}/auth/login", json={"email": "rh@menuiserie.demo", "password": "circuit-demo-2026"})
    headers = {"Authorization": f"Bearer {login.json()['token']}"}
    voucher = httpx.get(f"{base}/voucher-orders/1/vouchers", headers=headers).json()[0]
    keys = {k["key_id"]: bytes.fromhex(k["public_key"])
            for k in httpx.get(f"{base}/.well-known/circuit-voucher-keys.json").json()["keys"]}
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport=PHONE)
            page.goto(base + voucher["page_path"])
            page.wait_for_load_state("networkidle")
            assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
            assert page.evaluate("document.querySelector('img.qr').naturalWidth") > 0
            assert page.inner_text("#balance").startswith("50,00")
            assert page.inner_text("#code") == voucher["code"]
            shot = Image.open(io.BytesIO(page.screenshot(full_page=True)))
        finally:
            browser.close()
    (found,) = [b.text for b in zxingcpp.read_barcodes(shot, formats=zxingcpp.BarcodeFormat.QRCode)]
    assert verify_token(found, keys).voucher_id == voucher["id"]
