"""The phone web app end to end: a real server process, Debian's Chromium with a fake camera
that films the QR of a voucher this test just issued, driven by Playwright."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pyotp
import pytest
import qrcode
from PIL import Image
from playwright.async_api import async_playwright, expect
from sqlalchemy import text

CHROMIUM = "/usr/bin/chromium"
FRAME_WIDTH, FRAME_HEIGHT = 640, 480
FRAMES = 30  # three seconds at 10 fps, played in a loop by Chromium
PORTS = range(8210, 8300)

def write_y4m(payload: str, path: Path) -> None:
    """A few seconds of identical 640x480 I420 frames showing a large QR code of ``payload``."""
    code = qrcode.QRCode(error_correction=qrcode.constants.ERROR_CORRECT_M, border=4, box_size=1)
    code.add_data(payload)
    code.make(fit=True)
    modules = code.make_image().convert("L")
    side = (FRAME_HEIGHT - 20) // modules.size[0] * modules.size[0]
    frame = Image.new("L", (FRAME_WIDTH, FRAME_HEIGHT), 255)
    frame.paste(modules.resize((side, side), Image.NEAREST), ((FRAME_WIDTH - side) // 2, (FRAME_HEIGHT - side) // 2))
    luma = frame.tobytes()
    chroma = bytes([128]) * (FRAME_WIDTH // 2 * FRAME_HEIGHT // 2)
    with path.open("wb") as out:
        out.write(f"YUV4MPEG2 W{FRAME_WIDTH} H{FRAME_HEIGHT} F10:1 Ip A1:1 C420jpeg\n".encode())
        for _ in range(FRAMES):
            out.write(b"FRAME\n" + luma + chroma + chroma)


def free_port() -> int:
    for port in PORTS:
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port in 8210-8299")


@pytest.fixture(scope="module")
def server(database_url, tmp_path_factory, receipt_key_file):
    """``circuit``'s app under uvicorn, in its own process, on this module's database."""
    port = free_port()
    data = tmp_path_factory.mktemp("merchants-e2e-data")
    env = {**os.environ, "DATABASE_URL": database_url, "CIRCUIT_DATA_DIR": str(data),
           "CIRCUIT_RECEIPT_KEY_FILE": receipt_key_file}
    log = (data / "server.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "--factory", "api.app:create_app", "--host", "127.0.0.1",
         "--port", str(port), "--log-level", "warning"],
        env=env, stdout=log, stderr=subprocess.STDOUT, cwd=Path(__file__).parent.parent,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            if httpx.get(f"{base}/health", timeout=1).status_code == 200:
                break
        except httpx.TransportError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise RuntimeError((data / "server.log").read_text())
        time.sleep(0.2)
    yield base
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
    log.close()


async def _balance(engine, account_id: int) -> int:
    async with engine.connect() as conn:
        return await conn.scalar(text("SELECT balance_cents FROM accounts WHERE id = :id"), {"id": account_id})


async def test_cashier_phone_scans_a_voucher_and_takes_part_of_it(server, engine, approved_merchant, issue_voucher,
                                                                   merchant_programme, tmp_path):
    shop = await approved_merchant()
    voucher = await issue_voucher(5000, programme=merchant_programme)
    video = tmp_path / "voucher.y4m"
    write_y4m(voucher.token, video)

    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
            f"--use-file-for-fake-video-capture={video}",
        ])
        context = await browser.new_context(viewport={"width": 360, "height": 740}, locale="fr-FR")
        page = await context.new_page()
        await page.goto(f"{server}/shop/")

        await page.fill("#email", shop.owner_email)
        await page.fill("#password", shop.owner_password)
        await page.click("#login-btn")
        await expect(page.locator("#totp")).to_be_visible()  # the server asked for the second factor
        await page.fill("#totp", pyotp.TOTP(shop.totp_secret).now())
        await page.click("#login-btn")

        # The camera films the voucher: jsQR reads it and the server says what it is.
        await expect(page.locator("#preview-balance")).to_have_text("50,00 €", timeout=20_000)
        for key in "1250":
            await page.click(f'#keypad button[data-key="{key}"]')
        await expect(page.locator("#amount")).to_have_text("12,50 €")
        await page.click("#confirm-btn")
        await expect(page.locator("#result")).to_have_attribute("data-code", "ok")
        await expect(page.locator("#result-remaining")).to_have_text("37,50 €")
        assert await _balance(engine, voucher.account_id) == 3750
        assert await _balance(engine, shop.accounts["EUR"]) == 1250
        assert await page.evaluate("document.documentElement.scrollWidth") <= 360

        # The camera is covered from here on (it would read the same voucher again): the
        # cashier types the printed code instead.
        await page.evaluate("() => { navigator.mediaDevices.getUserMedia = () => Promise.reject(new Error('covered')); }")
        # The answer is lost on the way back: the screen must not claim the payment happened.
        await page.click("#next-btn")
        await expect(page.locator("#scan-status")).to_have_text("Caméra indisponible : saisissez le code imprimé sous le QR code.")
        await page.fill("#manual-code", voucher.code)
        await page.click("#manual-btn")
        await expect(page.locator("#preview-balance")).to_have_text("37,50 €")
        for key in "500":
            await page.click(f'#keypad button[data-key="{key}"]')

        async def lose_the_answer(route):
            await route.fetch()  # the server does take it...
            await route.abort("connectionreset")  # ...but the phone never hears back

        await page.route("**/merchant/redeem", lose_the_answer)
        await page.click("#confirm-btn")
        await expect(page.locator("#result")).to_have_attribute("data-code", "not_confirmed")
        await expect(page.locator("#result")).not_to_contain_text("Encaissé")
        await page.unroute("**/merchant/redeem")
        await page.click("#retry-btn")  # same idempotency key: the first receipt, not a second payment
        await expect(page.locator("#result")).to_have_attribute("data-code", "ok")
        await expect(page.locator("#result-remaining")).to_have_text("32,50 €")
        assert await _balance(engine, voucher.account_id) == 3250

        # Offline: the app says so and cannot take a payment.
        await context.set_offline(True)
        await page.click("#next-btn")
        await page.fill("#manual-code", voucher.code)
        await page.click("#manual-btn")
        await expect(page.locator("#result")).to_have_attribute("data-code", "network")
        await expect(page.locator("#net")).to_have_text("Hors ligne")
        await context.set_offline(False)
        assert await _balance(engine, voucher.account_id) == 3250

        # Today's takings, then the English switch.
        await page.click('#tabs button[data-tab="today"]')
        await expect(page.locator("#today-totals .net-total")).to_have_text("17,50 €")
        await page.click("#lang")
        await expect(page.locator('#tabs button[data-tab="today"]')).to_have_text("Today")
        await expect(page.locator("#today-totals .net-total")).to_have_text("€17.50")

        # Refund the second taking from the list; the voucher gets it back.
        page.on("dialog", lambda dialog: dialog.accept())
        await page.locator("#today-list button.refund").first.click()
        await expect(page.locator("#result")).to_have_attribute("data-code", "ok")
        await expect(page.locator("#result-remaining")).to_have_text("€37.50")
        assert await _balance(engine, voucher.account_id) == 3750

        # The owner sees this phone among the shop's signed-in devices, then signs out.
        await page.click('#tabs button[data-tab="account"]')
        await expect(page.locator("#devices")).to_contain_text("this device")
        await page.click("#logout-btn")
        await expect(page.locator("#login-btn")).to_be_visible()
        await browser.close()
