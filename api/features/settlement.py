"""Settlement: fee rules, payout batches, SEPA files, statements, invoices, reconversion.

The domain lives in ``settlement``; HTTP in ``api.routes.settlement``; the ``circuit settle``
commands in ``api.commands.settlement``. This module plugs them in and seeds the demo's rules.
"""

from __future__ import annotations

from datetime import datetime, time, timedelta, timezone

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from api.commands.settlement import register
from api.routes.settlement import MerchantSettlementController, SettlementController
from ledger.accounts import AccountKind, open_account
from ledger.merchants import merchant_account
from ledger.scheme import get_programme, issue
from ledger.transfers import Posting, transfer
from settlement.fees import create_rule
from settlement.periods import PARIS, Period, period_of

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
DEMO_MERCHANT_IBAN = "FR7630004000031234567890143"
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
    takings = await _demo_takings(conn, demo)
    return (f"settlement: {created} fee rules (7.9% gift, 5% culture, 0% local currency, 2% reconversion; VAT 20%); "
            f"{takings} gift-voucher redemptions last month, ready for `circuit settle prepare --period "
            f"{_last_month().label}`")


def _last_month() -> Period:
    return period_of("monthly", period_of("monthly", datetime.now(timezone.utc)).starts_at - timedelta(days=1))


async def _demo_takings(conn: AsyncConnection, demo: dict) -> int:
    """Last month's gift-voucher redemptions at the demo shops, so a batch has something to pay.
    Each is a real ledger transfer with its taking row, as a scan at the till writes them; shops
    without bank details get the demo's (a settlement pays to an IBAN)."""
    gift = await get_programme(conn, demo["programmes"]["gift"])
    month = _last_month()
    amounts = {0: (4_500, 12_000, 2_990), 1: (2_000, 850), 2: (6_400,)}
    count = 0
    for index, merchant_id in enumerate(demo["merchant_ids"]):
        await conn.execute(text(
            "UPDATE merchants SET iban = coalesce(iban, :iban), bic = coalesce(bic, 'BNPAFRPP'), "
            "category = coalesce(category, 'commerce') WHERE id = :id"),
            {"iban": DEMO_MERCHANT_IBAN, "id": merchant_id})
        account = await merchant_account(conn, merchant_id, "EUR")
        for day, amount in enumerate(amounts.get(index, ()), start=3):
            voucher = await open_account(conn, kind=AccountKind.VOUCHER, unit="EUR", owner_type="demo")
            await issue(conn, key=f"demo-voucher-{merchant_id}-{day}", programme=gift, to_account_id=voucher,
                        amount_cents=amount)
            moment = datetime.combine(month.first_day + timedelta(days=day * 2), time(10), PARIS)
            moved = await transfer(conn, key=f"demo-redeem-{merchant_id}-{day}", kind="voucher.redeem",
                                   postings=[Posting(voucher, -amount), Posting(account, amount)], effective_at=moment)
            await conn.execute(text(
                "INSERT INTO merchant_takings (merchant_id, programme_id, kind, amount_cents, transfer_id, "
                "effective_at) VALUES (:m, :p, 'redeem', :a, :t, :e)"),
                {"m": merchant_id, "p": gift.id, "a": amount, "t": moved.transfer_id, "e": moment})
            count += 1
    return count
