"""Merchants: onboarding and review, staff on phones, scan-and-redeem, the shop's phone app.

The HTTP side lives in ``merchant_app_api``; the domain in ``ledger.merchants`` and
``ledger.redemptions``. This module only plugs them into the app, the CLI and the demo.
"""

from __future__ import annotations

from merchant_app_api.onboarding import ApplicationController, MerchantReviewController
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from api.auth import create_user
from api.throttle import sweep_job
from audit.chain import set_actor
from ledger import merchants, redemptions
from merchant_app_api.app_files import shop_app
from merchant_app_api.receipts import receipt_keys, receipt_signing_key
from merchant_app_api.redeem import RedeemController
from merchant_app_api.staff import StaffController
from merchant_app_api.takings import TakingsController

ROUTES = [ApplicationController, MerchantReviewController, StaffController, RedeemController, TakingsController,
          receipt_keys, shop_app]

JOBS = [sweep_job]

# The phone web app's files (its data all comes from the API, behind sign-in).
PUBLIC_PATHS = ["^/shop(/|$)"]

ERROR_STATUS = {
    "merchant_not_found": 404,
    "invalid_application": 422,
    "siret_taken": 409,
    "merchant_status_conflict": 409,
    "programme_refuses_merchant": 409,
    "merchant_suspended": 403,
    "merchant_not_approved": 403,
    "unknown_voucher": 404,
    "bad_signature": 422,
    "expired": 409,
    "revoked": 409,
    "not_accepted_here": 422,  # as the vouchers capability declares it
    "insufficient_balance": 409,
    "amount_invalid": 422,
    "already_refunded": 409,
    "refund_not_allowed": 403,
    "refund_exceeds_balance": 409,
    "taking_not_found": 404,
    "day_already_closed": 409,
    "day_not_started": 422,
}


DEMO_ORDER = 30  # after vouchers (20): approves the demo shops for its programmes
DEMO_OWNER_TOTP_SECRET = "CIRCUITDEMOSHOPOWNERTOTP"  # printed for the demo; a real owner enrols their own
DEMO_CASHIER_EMAIL = "caisse@librairie.demo"
# The issuer's short list of shop categories (codes as the programmes' acceptance rules name them).
DEMO_CATEGORIES = (
    ("bookshop", "Librairie", "Bookshop"), ("bakery", "Boulangerie-pâtisserie", "Bakery"),
    ("food", "Alimentation, épicerie fine", "Food shop"), ("restaurant", "Café, restaurant", "Café, restaurant"),
    ("clothing", "Habillement", "Clothing"), ("cinema", "Cinéma", "Cinema"), ("theatre", "Théâtre", "Theatre"),
    ("music", "Disquaire, instruments", "Music"), ("supermarket", "Grande surface", "Supermarket"),
    ("fuel", "Carburant", "Fuel station"),
)
# (SIRET, IBAN, category, NAF, address): the identities the foundation's three demo shops lack.
DEMO_SHOPS = (
    ("73282932000074", "FR7630006000011234567890189", "bookshop", "47.61Z", "3 place du Marché"),
    ("35600000000048", "FR1420041010050500013M02606", "bakery", "10.71C", "12 rue Saint-Martial"),
    ("44306184100047", "FR7630004000031234567890143", "food", "47.29Z", "Halles, 1 place des Halles"),
)


async def seed_demo(conn: AsyncConnection, demo: dict) -> str:
    """The demo shops' identities, their approval per programme, the bookshop's owner with a
    second factor and a cashier, and one redemption of a demo voucher at the bookshop."""
    await set_actor(conn, "demo")
    issuer_id = demo["issuer_id"]
    for code, label_fr, label_en in DEMO_CATEGORIES:
        await merchants.add_category(conn, issuer_id=issuer_id, code=code, label_fr=label_fr, label_en=label_en,
                                     actor="demo")
    programmes = demo["programmes"]
    for merchant_id, (siret, iban, category, naf, address) in zip(demo["merchant_ids"], DEMO_SHOPS):
        checked = merchants.normalise(merchants.Application(
            issuer_id=issuer_id, legal_name="-", trade_name="-", siret=siret, iban=iban, category=category,
            naf_code=naf, address_line=address, postcode="16000", commune="Angoulême", commune_insee="16015",
            email=f"contact{merchant_id}@commerce.demo", phone="05 45 00 00 00", programme_ids=(programmes["gift"],)))
        await conn.execute(text(
            "UPDATE merchants SET siret = :siret, iban = :iban, bic = :bic, category = :category, naf_code = :naf, "
            "address_line = :address, postcode = :postcode, commune = :commune, commune_insee = :insee, "
            "email = :email, phone = :phone WHERE id = :id"),
            {"siret": checked.siret, "iban": checked.iban, "bic": checked.bic, "category": checked.category,
             "naf": checked.naf_code, "address": checked.address_line, "postcode": checked.postcode,
             "commune": checked.commune, "insee": checked.commune_insee, "email": checked.email,
             "phone": checked.phone, "id": merchant_id})
        wanted = [programmes["gift"], programmes["bulle"]]
        if "culture" in programmes and await merchants.programme_refusal(conn, programmes["culture"], category, merchant_id) is None:
            wanted.append(programmes["culture"])
        await merchants.approve(conn, merchant_id, wanted, actor="demo")
    bookshop = demo["merchant_ids"][0]
    owner_id = await conn.scalar(text("SELECT id FROM users WHERE merchant_id = :id AND role = 'merchant_owner'"),
                                 {"id": bookshop})
    await conn.execute(text("UPDATE users SET totp_secret = :secret WHERE id = :id"),
                       {"secret": DEMO_OWNER_TOTP_SECRET, "id": owner_id})
    await create_user(conn, email=DEMO_CASHIER_EMAIL, password=demo["password"], role="merchant_cashier",
                      display_name="Caisse 1", merchant_id=bookshop)
    line = (f"merchants: 3 shops approved (bookshop also for culture); shop app at /shop/ — owner "
            f"owner@librairie.demo with TOTP secret {DEMO_OWNER_TOTP_SECRET}, cashier {DEMO_CASHIER_EMAIL}")
    if demo.get("voucher_codes"):
        # The order's last voucher: the vouchers tour shows the first ones untouched.
        code = demo["voucher_codes"][-1]
        receipt = await redemptions.redeem(
            conn, receipt_signing_key(), merchant_id=bookshop, user_id=owner_id, amount_cents=1250,
            client_key="demo-first-redemption", code=code, actor="demo")
        line += (f"; voucher {code} redeemed 12.50 € at the bookshop, "
                 f"{receipt.body['voucher_balance_after_cents'] / 100:.2f} € left")
    return line
