"""The demo scheme comes with the default fee rules and last month's takings, ready to settle."""

from __future__ import annotations

from sqlalchemy import text

from api.demo import seed_demo
from api.features.settlement import _last_month
from ledger.check import check_ledger
from settlement import batches
from settlement.fees import list_rules


async def test_the_demo_settles_last_month_with_the_default_rules(engine):
    async with engine.begin() as conn:
        message = await seed_demo(conn)
    assert "settlement: 4 fee rules" in message  # gift, culture, and la Bulle's payments and reconversion
    async with engine.begin() as conn:
        issuer_id, operator, approver = (await conn.execute(text(
            "SELECT u.issuer_id, (SELECT id FROM users WHERE email = 'operator@circuit.demo'), "
            "(SELECT id FROM users WHERE email = 'approver@circuit.demo') FROM users u "
            "WHERE u.email = 'operator@circuit.demo'"))).one()
        rates = sorted((rule.kind, rule.rate_bp) for rule in await list_rules(conn, issuer_id))
        batch = await batches.prepare(conn, issuer_id=issuer_id, period=_last_month().label, user_id=operator)
    assert rates == [("reconversion", 200), ("takings", 0), ("takings", 500), ("takings", 790)]
    async with engine.begin() as conn:
        await batches.approve(conn, batch_id=batch.id, user_id=approver)
        files = await batches.export(conn, batch_id=batch.id, user_id=approver)
        payments = await batches.batch_payments(conn, batch.id)
        assert (await check_ledger(conn)).ok
    assert len(payments) == 3 and all(p.payout_cents > 0 for p in payments)
    assert b"<NbOfTxs>3</NbOfTxs>" in files["pain.001"]
