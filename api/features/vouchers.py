"""Gift vouchers plug in here: their routes (api/routes/vouchers.py), commands
(api/commands/vouchers.py), the expiry job and the demo's employer order."""

from __future__ import annotations

import asyncio

import structlog
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from api.auth import create_user
from api.commands.vouchers import register
from api.routes.vouchers import (
    OrdersController, ProgrammesController, VouchersController, balance_enquiry, payment_webhook, voucher_keys,
    voucher_page, voucher_page_qr,
)
from audit.chain import set_actor
from ledger import employers as employer_domain
from ledger import orders as order_domain
from ledger import programmes as programme_domain
from ledger import vouchers as voucher_domain
from ledger.order_lines import check_lines
from ledger.tokens import format_code

log = structlog.get_logger("vouchers")

EXPIRY_JOB_SECONDS = 300.0


async def expiry_job(engine: AsyncEngine, stop: asyncio.Event) -> None:
    """Move the balance of expired vouchers to breakage, every few minutes."""
    while not stop.is_set():
        try:
            async with engine.begin() as conn:
                run = await voucher_domain.expire_due(conn, actor="job:vouchers.expire")
            if run.vouchers:
                log.info("vouchers_expired", vouchers=run.vouchers, moved_cents=run.moved_cents)
        except Exception:
            log.exception("voucher_expiry_failed")
        try:
            await asyncio.wait_for(stop.wait(), timeout=EXPIRY_JOB_SECONDS)
        except TimeoutError:
            pass


DEMO_ORDER = 20
DEMO_EMPLOYER_EMAIL = "rh@menuiserie.demo"


async def seed_demo(conn: AsyncConnection, demo: dict) -> str:
    """A gift programme's rules, a culture programme, an employer with an issued order."""
    await set_actor(conn, "demo")
    gift = await programme_domain.update_programme(
        conn, demo["programmes"]["gift"], actor="demo", face_value_min_cents=1_000, face_value_max_cents=30_000,
        validity_months=18, categories_excluded=["supermarket", "fuel"], purchase_fee_bp=0,
        texts={"fr": {"name": "Chèque cadeau Cœur de ville", "description": "Valable dans les commerces indépendants du centre-ville."},
               "en": {"name": "Town-centre gift voucher", "description": "Valid in the town centre's independent shops."}})
    culture = await programme_domain.create_programme(
        conn, issuer_id=demo["issuer_id"], kind="culture", unit="EUR", actor="demo", name="Chèque culture",
        face_value_min_cents=500, face_value_max_cents=15_000, validity_months=12, purchase_fee_bp=500,
        categories_allowed=["bookshop", "cinema", "theatre", "music"], second_language="eu",
        texts={"fr": {"name": "Chèque culture", "description": "Librairies, cinémas, théâtres, disquaires."},
               "eu": {"name": "Kultura txekea", "description": "Liburu-dendak, zinemak, antzokiak."}})
    employer = await employer_domain.create_employer(
        conn, issuer_id=demo["issuer_id"], name="Menuiserie Dubois SARL", siret="73282932000074",
        address="12 rue des Chais, 16000 Angoulême", actor="demo")
    user_id = await create_user(conn, email=DEMO_EMPLOYER_EMAIL, password=demo["password"], role="employer",
                                display_name="Service RH, Menuiserie Dubois", issuer_id=demo["issuer_id"])
    await employer_domain.attach_user(conn, user_id=user_id, employer_id=employer.id, actor="demo")
    order = await order_domain.create_order(
        conn, employer_id=employer.id, programme_id=gift.id, event="christmas", event_label="Noël 2026",
        message="Joyeux Noël à toute l'équipe !", colour_primary="#7A1F2B", colour_secondary="#E8C170",
        created_by=user_id, actor="demo")
    lines = check_lines([(1, "Camille Martin", "camille@menuiserie.demo", 5000), (2, "Louis Bernard", "", 5000),
                         (3, "Inès Petit", "", 7500)], min_cents=gift.face_value_min_cents, max_cents=gift.face_value_max_cents)
    await order_domain.replace_lines(conn, order.id, lines, actor="demo")
    _, fixed = await order_domain.confirm(conn, order.id, actor="demo")
    await order_domain.record_payment(conn, order.id, amount_cents=fixed.total_cents, reference="VIR DUBOIS NOEL 2026",
                                      actor="demo")
    _, vouchers = await order_domain.issue(conn, order.id, actor="demo")
    demo.setdefault("programmes", {})["culture"] = culture.id
    demo["employer_ids"] = [employer.id]
    demo["voucher_codes"] = [format_code(v.code) for v in vouchers]
    codes = ", ".join(f"{format_code(v.code)} ({v.face_value_cents / 100:.2f} €)" for v in vouchers)
    return (f"vouchers: employer {employer.name} ({DEMO_EMPLOYER_EMAIL}) order {order.id} issued, codes {codes}; "
            f"culture programme {culture.id}")


ROUTES = [ProgrammesController, OrdersController, VouchersController, voucher_keys, balance_enquiry, payment_webhook,
          voucher_page,
          voucher_page_qr]
PUBLIC_PATHS = ["^/\\.well-known/circuit-voucher-keys\\.json$", "^/public/vouchers/balance$", "^/v/",
                "^/webhooks/voucher-payments$"]
JOBS = [expiry_job]
COMMANDS = [register]
ERROR_STATUS = {
    "invalid_siren": 422, "invalid_siret": 422, "invalid_programme_rules": 422, "not_accepted_here": 422,
    "employer_exists": 409, "order_lines_refused": 422, "logo_refused": 415, "logo_too_large": 413,
    "invalid_colour": 422, "invalid_message": 422, "illegal_transition": 409, "payment_mismatch": 422,
    "order_empty": 409, "order_not_issued": 409, "face_value_out_of_range": 422, "voucher_not_found": 404, "revoked": 409, "expired": 409,
    "not_extendable": 409, "token_malformed": 422, "unknown_signing_key": 422, "bad_signature": 422,
    "code_malformed": 422, "code_check_failed": 422,
}
