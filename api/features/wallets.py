"""Wallets: residents' wallets in the local currency, top-ups, rotating-QR payments, transfers,
town campaigns and payments, and the wallet web page at ``/wallet/``.

The domain lives in ``ledger.wallets``, ``ledger.topups`` and ``ledger.rotating_codes``; HTTP in
``api.routes.wallets`` and ``merchant_app_api.wallet_payments``. This module plugs them in.
"""

from __future__ import annotations

from pathlib import Path

from litestar.datastructures import CacheControlHeader
from litestar.static_files import create_static_files_router
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from api.routes.wallets import (
    ResidentWalletController,
    TopupWebhookController,
    WalletAdminController,
    WalletOpeningController,
)
from merchant_app_api.wallet_payments import WalletPaymentsController

STATIC_DIR = Path(__file__).resolve().parent.parent / "static" / "wallet"

ROUTES = [
    WalletOpeningController, ResidentWalletController, TopupWebhookController, WalletAdminController,
    WalletPaymentsController,
    # no-cache: phones revalidate (cheap with ETags), so a new version of the page arrives at once.
    create_static_files_router(path="/wallet", directories=[STATIC_DIR], html_mode=True, name="wallet_page",
                               include_in_schema=False, cache_control=CacheControlHeader(no_cache=True)),
]

PUBLIC_PATHS = ["^/wallet(/|$)", "^/wallets/open$", "^/webhooks/topups$"]

ERROR_STATUS = {
    "wallet_not_found": 404,
    "topup_intent_not_found": 404,
    "wallet_limit_exceeded": 409,
    "wallet_contact_taken": 409,
    "wallet_code_invalid": 422,
    "wallet_code_used": 409,
    "merchant_not_payable": 422,
    "not_a_counter": 403,
    "csv_invalid": 422,
    "voucher_in_another_wallet": 409,
    "webhook_signature_invalid": 401,
    "webhook_timestamp_stale": 401,
    "webhook_replayed": 409,
    "topup_already_paid": 409,
    "topup_amount_mismatch": 422,
}

DEMO_ORDER = 60  # after merchants (30), which approves the demo shops for La Bulle
DEMO_COUNTER_EMAIL = "counter@boulangerie.demo"


async def seed_demo(conn: AsyncConnection, demo: dict) -> str:
    """The bakery is also an exchange counter, with a cashier who credits wallets."""
    from api.auth import Role, create_user

    counter_id = demo["merchant_ids"][1]
    await conn.execute(text("UPDATE merchants SET is_counter = true WHERE id = :m"), {"m": counter_id})
    await create_user(conn, email=DEMO_COUNTER_EMAIL, password=demo["password"], role=Role.MERCHANT_CASHIER,
                      display_name="Comptoir", merchant_id=counter_id)
    return (f"wallets: the page is at /wallet/ (resident@circuit.demo); merchant {counter_id} is an exchange "
            f"counter (cashier {DEMO_COUNTER_EMAIL}); tiers: unverified holds 150.00 and receives 250.00 a month")
