"""Settlement: fee rules, payout batches, SEPA files, statements, invoices, reconversion.

The domain lives in ``settlement``; HTTP in ``api.routes.settlement``; the ``circuit settle``
commands in ``api.commands.settlement``. This module plugs them in and seeds the demo's rules.
"""

from __future__ import annotations

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from api.commands.settlement import register
from api.routes.settlement import MerchantSettlementController, SettlementController
from settlement.fees import create_rule

ROUTES = [SettlementController, MerchantSettlementController]
COMMANDS = [register]
ERROR_STATUS = {
    "invalid_period": 422,
    "period_not_ended": 409,
    "invalid_fee_rule": 422,
    "fee_rule_conflict": 409,
    "no_fee_rule": 409,
    "batch_not_found": 404,
    "batch_state": 409,
    "batch_in_progress": 409,
    "same_approver": 403,
    "not_allowed": 403,
    "bank_details_invalid": 422,
    "payment_not_found": 404,
    "payment_state": 409,
    "reconversion_refused": 422,
}
DEMO_ORDER = 60  # after the merchants' seeder, which gives the demo merchants their bank details

# The scheme's usual rates (Pays Basque au Cœur: 7.9% gift, 5% culture; la Bulle: no fee on
# payments, 2% to convert units back to euros); VAT 20% on the fee.
DEMO_RULES = (("gift", "takings", 790), ("culture", "takings", 500), ("local_currency", "takings", 0),
              ("local_currency", "reconversion", 200))


async def seed_demo(conn: AsyncConnection, demo: dict) -> str | None:
    issuer_id = demo["issuer_id"]
    await conn.execute(text(
        "UPDATE issuers SET vat_number = coalesce(vat_number, 'FR44732829320'), "
        "address = coalesce(address, '1 place de l''Hôtel de Ville, 16000 Angoulême'), "
        "debtor_iban = coalesce(debtor_iban, 'FR7630006000011234567890189'), "
        "debtor_bic = coalesce(debtor_bic, 'AGRIFRPP') WHERE id = :id"), {"id": issuer_id})
    programmes = (await conn.execute(text("SELECT id, kind FROM programmes WHERE issuer_id = :id ORDER BY id"),
                                     {"id": issuer_id})).all()
    created = 0
    for kind, rule_kind, rate_bp in DEMO_RULES:
        for programme in programmes:
            if programme.kind == kind:
                await create_rule(conn, issuer_id=issuer_id, actor="demo", kind=rule_kind, rate_bp=rate_bp,
                                  programme_id=programme.id)
                created += 1
    return f"settlement: {created} fee rules (7.9% gift, 5% culture, 0% local currency, 2% reconversion; VAT 20%)"
