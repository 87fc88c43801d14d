"""The wallet page in a real browser (Debian's Chromium) against a real server process: a
resident opens a wallet, a counter credits it, the QR on screen is read back from a
screenshot and filmed by the shop app's (fake) camera in a second browser, the cashier types
the amount, the resident's page shows the payment in its history, and the shop refunds it; the
resident then pays the shop's own QR with the page's camera, keeps a gift voucher, and the page
keeps showing valid codes offline."""

from __future__ import annotations

import asyncio
import io
import os
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import httpx
import pyotp
import pytest
import zxingcpp
from PIL import Image
from sqlalchemy import text

from ledger import rotating_codes
from test_merchants_phone_app import write_y4m

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync"]


def wallet_port() -> int:
    """A free port in the wallets range (8400-8499)."""
    for port in range(8400 + os.getpid() % 50, 8500):
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise AssertionError("no free port in 8400-8499")


@pytest.fixture
async def server(database_url, tmp_path):
    port = wallet_port()
    env = {**os.environ, "DATABASE_URL": database_url, "CIRCUIT_DATA_DIR": str(tmp_path / "data"),
           "PYTHONPATH": str(ROOT)}
    # Its log goes to a file: an unread pipe fills up and stalls the server.
    log = open(tmp_path / "server.log", "w")
    process = subprocess.Popen([sys.executable, "-m", "api.cli", "serve", "--port", str(port)], cwd=ROOT, env=env,
                               stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient(base_url=base, timeout=5) as http:
            for _ in range(300):
                try:
                    if (await http.get("/health")).status_code == 200:
                        break
                except httpx.TransportError:
                    await asyncio.sleep(0.1)
                await asyncio.sleep(0.1)
            else:
                raise AssertionError(f"circuit serve did not come up: {(tmp_path / 'server.log').read_text()[-2000:]}")
            yield http
    finally:
        process.terminate()
        process.wait(timeout=20)
        log.close()


def decode_qr(png: bytes) -> str:
    found = zxingcpp.read_barcodes(Image.open(io.BytesIO(png)).convert("L"))
    assert len(found) == 1, "exactly one QR on screen"
    return found[0].text


async def shop_app(playwright, base_url: str, shop, video: Path):
    """The cashier's phone: the merchants' shop app, signed in, its camera filming ``video``."""
    from playwright.async_api import expect

    browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=[
        *CHROMIUM_FLAGS, "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
        f"--use-file-for-fake-video-capture={video}"])
    page = await (await browser.new_context(viewport={"width": 360, "height": 740}, locale="fr-FR")).new_page()
    await page.goto(f"{base_url}/shop/")
    await page.fill("#email", shop.owner_email)
    await page.fill("#password", shop.owner_password)
    await page.click("#login-btn")
    await expect(page.locator("#totp")).to_be_visible()
    await page.fill("#totp", pyotp.TOTP(shop.totp_secret).now())
    await page.click("#login-btn")
    return browser, page


def plain(text: str) -> str:
    return text.replace("\u202f", " ").replace("\xa0", " ")


async def test_a_resident_pays_a_shop_with_the_qr_shown_by_the_wallet_page(server, engine, bulle, approved_merchant,
                                                                           issue_voucher, tmp_path):
    from playwright.async_api import async_playwright, expect

    shop = await approved_merchant(programme_ids=[bulle.id])
    async with engine.begin() as conn:
        await conn.execute(text("UPDATE merchants SET is_counter = true WHERE id = :m"), {"m": shop.id})

    # The resident's phone camera will film the shop's own QR (asking 3.00).
    shop_qr = (await server.get("/merchant/wallet/qr", params={"amount_cents": 300}, headers=shop.headers)).json()
    write_y4m(shop_qr["payload"], tmp_path / "shop-qr.y4m")

    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=[
            *CHROMIUM_FLAGS, "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
            f"--use-file-for-fake-video-capture={tmp_path / 'shop-qr.y4m'}"])
        try:
            context = await browser.new_context(locale="fr-FR", viewport={"width": 390, "height": 844},
                                                device_scale_factor=2)
            await context.clock.install()
            page = await context.new_page()
            await page.goto(f"{server.base_url}/wallet/")
            await expect(page.locator("h1")).to_have_text("Mon porte-monnaie")
            await page.fill("#open-form input[name=display_name]", "Camille Martin")
            await page.fill("#open-form input[name=email]", f"camille-{uuid.uuid4().hex[:6]}@example.org")
            await page.click("#open-form button[type=submit]")
            await expect(page.locator("#wallet")).to_be_visible()
            wallet_id = int(await page.locator("#wallet-number").inner_text())

            credited = await server.post("/merchant/wallet/counter-credits",
                                         headers={**shop.headers, "Idempotency-Key": f"browser-{wallet_id}"},
                                         json={"wallet_id": wallet_id, "amount_cents": 2_000, "method": "cash"})
            assert credited.status_code == 201, credited.text
            await expect(page.locator("#balance")).to_contain_text("20,00")

            code = decode_qr(await page.locator("#qr").screenshot())
            assert code.startswith(f"CW1.{wallet_id}.")
            # The shop app's camera films it; the cashier types 7.50 and confirms.
            write_y4m(code, tmp_path / "code.y4m")
            shop_browser, till = await shop_app(playwright, str(server.base_url), shop, tmp_path / "code.y4m")
            try:
                await expect(till.locator("#preview-programme")).to_have_text("La Bulle", timeout=20_000)
                for key in "750":
                    await till.click(f'#keypad button[data-key="{key}"]')
                await till.click("#confirm-btn")
                await expect(till.locator("#result")).to_have_attribute("data-code", "ok")
                assert plain(await till.locator("#result-amount").inner_text()) == "7,50 Bulles"

                first = page.locator("#history li").first
                await expect(first).to_contain_text("Librairie du Marché")
                await expect(first).to_contain_text("-7,50")
                await expect(page.locator("#balance")).to_contain_text("12,50")

                # The resident changes their mind: the shop refunds it from today's list.
                await till.click('#tabs button[data-tab="today"]')
                till.on("dialog", lambda dialog: dialog.accept())
                await till.locator('button.refund[data-kind="payment"]').first.click()
                await expect(till.locator("#result")).to_have_attribute("data-code", "ok")
                assert plain(await till.locator("#result-amount").inner_text()) == "7,50 Bulles"
                await expect(page.locator("#balance")).to_contain_text("20,00")
                await expect(page.locator("#history li").first).to_contain_text("+7,50")
            finally:
                await shop_browser.close()

            # The other way round: the resident scans the shop's own QR with the camera (jsQR),
            # sees the shop's name and the amount it asks, and confirms.
            await page.click("#scan-button")
            await page.click("#camera-button")
            await expect(page.locator("#pay-merchant")).to_have_text("Payer Librairie du Marché", timeout=20_000)
            await expect(page.locator("#merchant-code")).to_have_value(shop_qr["payload"])
            await expect(page.locator("#pay-amount")).to_have_value("3.00")
            await page.click("#pay-form button[type=submit]")
            await expect(page.locator("#balance")).to_contain_text("17,00")
            await expect(page.locator("#history li").first).to_contain_text("-3,00")

            replayed = await server.post("/merchant/wallet/payments",
                                         headers={**shop.headers, "Idempotency-Key": f"again-{wallet_id}"},
                                         json={"code": code, "amount_cents": 100})
            assert replayed.json()["code"] == "wallet_code_used"

            # A gift voucher received on paper: added by its code, shown with its balance and its QR.
            voucher = await issue_voucher(3_000)
            await page.fill("#voucher-form input[name=code]", voucher.code)
            await page.click("#voucher-form button[type=submit]")
            gift = page.locator(f"#vouchers li[data-voucher-id='{voucher.id}']")
            await expect(gift).to_contain_text("30,00")
            await gift.locator("button").click()
            assert decode_qr(await gift.locator("canvas").screenshot()) == voucher.token

            await page.click("#lang")
            await expect(page.locator("h1")).to_have_text("My wallet")
            await expect(page.locator("#history li").first).to_contain_text("Payment")

            # Offline and a minute later (the page's clock moved on), the page still shows a code,
            # computed on the phone, that is the wallet's TOTP for that moment and no other.
            secret = await page.evaluate("JSON.parse(localStorage.getItem('circuit.wallet')).code.secret")
            await context.set_offline(True)
            await page.clock.fast_forward(60_000)
            page_now = await page.evaluate("Date.now() / 1000")
            offline_code = decode_qr(await page.locator("#qr").screenshot())
            assert offline_code != code
            assert offline_code == rotating_codes.code_for(wallet_id, secret, step=rotating_codes.step_of(page_now))
            # Reopened with no network: the service worker's copy of the page still shows the code.
            await page.reload()
            await expect(page.locator("#balance")).to_contain_text("17.00")  # in English, as chosen before
            page_now = await page.evaluate("Date.now() / 1000")
            reopened = decode_qr(await page.locator("#qr").screenshot())
            assert reopened == rotating_codes.code_for(wallet_id, secret, step=rotating_codes.step_of(page_now))
        finally:
            await browser.close()
