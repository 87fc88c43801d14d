"""Reconversion: local-currency units back to euros, for a fee, paid in the next batch."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest
from sqlalchemy import text

from ledger.check import check_ledger
from ledger.errors import InsufficientFunds
from settlement import batches
from settlement.errors import NoFeeRule, ReconversionRefused
from settlement.fees import create_rule
from settlement.reconversion import list_reconversions, request_reconversion


async def test_units_leave_circulation_euros_leave_the_reserve_and_the_fee_is_charged(engine, settlement_scheme):
    scheme = await settlement_scheme()
    merchant_id = await scheme.merchant()
    await scheme.take(merchant_id, scheme.bulle, 10_000, datetime(2026, 11, 4, tzinfo=timezone.utc))
    with pytest.raises(NoFeeRule):
        async with engine.begin() as conn:
            await request_reconversion(conn, merchant_id=merchant_id, amount_cents=6_000, key="r1", actor="owner")
    async with engine.begin() as conn:
        await create_rule(conn, issuer_id=scheme.issuer_id, actor="test", rate_bp=0, programme_id=scheme.bulle.id)
        await create_rule(conn, issuer_id=scheme.issuer_id, actor="test", kind="reconversion", rate_bp=200,
                          programme_id=scheme.bulle.id)
    async with engine.begin() as conn:
        first = await request_reconversion(conn, merchant_id=merchant_id, amount_cents=6_000, key="r1", actor="owner")
    async with engine.begin() as conn:  # a retried request is the same request
        again = await request_reconversion(conn, merchant_id=merchant_id, amount_cents=6_000, key="r1", actor="owner")
    assert again.id == first.id
    with pytest.raises(InsufficientFunds):  # 40.00 left, 50.00 asked
        async with engine.begin() as conn:
            await request_reconversion(conn, merchant_id=merchant_id, amount_cents=5_000, key="r2", actor="owner")
    with pytest.raises(ReconversionRefused):
        async with engine.begin() as conn:
            await request_reconversion(conn, merchant_id=merchant_id, amount_cents=-5, key="r3", actor="owner")

    # Asked in December: paid by the December batch (November's payments are not yet settled either).
    circulating = -await scheme.balance(scheme.bulle.float_account_id)
    async with engine.begin() as conn:
        batch = await batches.prepare(conn, issuer_id=scheme.issuer_id, period="2026-12", user_id=scheme.operator_id,
                                      now=datetime(2027, 1, 1, tzinfo=timezone.utc))
    async with engine.begin() as conn:
        await batches.approve(conn, batch_id=batch.id, user_id=scheme.approver_id)
        await batches.export(conn, batch_id=batch.id, user_id=scheme.approver_id)
    async with engine.connect() as conn:
        lines = {line.kind: line for line in await batches.batch_lines(conn, batch.id)}
        [payment] = await batches.batch_payments(conn, batch.id)
        [reconversion] = await list_reconversions(conn, merchant_id)
        merchant_bul = await conn.scalar(text("SELECT id FROM accounts WHERE kind = 'merchant' AND owner_id = :m "
                                              "AND unit = 'BUL'"), {"m": str(merchant_id)})
        report = await check_ledger(conn)
    assert (lines["takings"].gross_cents, lines["takings"].collect_cents) == (10_000, 0)  # payments stay units
    assert (lines["reconversion"].collect_cents, lines["reconversion"].fee_cents,
            lines["reconversion"].vat_cents) == (6_000, 120, 24)
    assert payment.payout_cents == 6_000 - 120 - 24
    assert reconversion.batch_id == batch.id
    assert await scheme.balance(merchant_bul) == 4_000
    assert -await scheme.balance(scheme.bulle.float_account_id) == circulating - 6_000
    assert await scheme.balance(scheme.bulle.reserve_account_id) == circulating - 6_000
    assert report.ok, report.discrepancies
