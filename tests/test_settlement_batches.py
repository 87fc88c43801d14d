"""Payout batches on a real ledger: the golden example, approval by a second person, export,
late items, carried balances, counter sales, returned transfers."""

from __future__ import annotations

import asyncio
from datetime import datetime, timezone
from pathlib import Path

import pytest
import xmlschema
from sqlalchemy import text

from ledger.accounts import AccountKind, open_account
from ledger.check import check_ledger
from ledger.transfers import Posting, transfer
from settlement import batches
from settlement.accounts import settlement_account
from settlement.errors import (BankDetailsInvalid, BatchInProgress, BatchState, NoFeeRule, NotAllowed, PeriodNotEnded,
                               SameApprover)
from settlement.fees import create_rule, create_waiver

XSD = Path(__file__).parent / "data" / "pain.001.001.09.xsd"


def at(month: int, day: int, hour: int = 12) -> datetime:
    return datetime(2026, month, day, hour, tzinfo=timezone.utc)


async def default_rules(scheme) -> None:
    async with scheme.engine.begin() as conn:
        for programme, rate in ((scheme.gift, 790), (scheme.culture, 500), (scheme.bulle, 0)):
            await create_rule(conn, issuer_id=scheme.issuer_id, actor="test", rate_bp=rate, programme_id=programme.id)


async def golden_month(scheme, merchant_id: int, month: int = 11) -> None:
    """1,000.00 € of gift vouchers and 200.00 € of culture vouchers in a month."""
    for amount, day in ((60_000, 3), (25_000, 14), (15_000, 28)):
        await scheme.take(merchant_id, scheme.gift, amount, at(month, day))
    for amount, day in ((12_000, 5), (8_000, 20)):
        await scheme.take(merchant_id, scheme.culture, amount, at(month, day))


async def run(engine, step, **kwargs):
    async with engine.begin() as conn:
        return await step(conn, **kwargs)


async def test_golden_example_fees_vat_and_payout(engine, settlement_scheme):
    scheme = await settlement_scheme()
    await default_rules(scheme)
    merchant_id = await scheme.merchant()
    await golden_month(scheme, merchant_id)

    batch = await run(engine, batches.prepare, issuer_id=scheme.issuer_id, period="2026-11", user_id=scheme.operator_id)
    async with engine.connect() as conn:
        lines = await batches.batch_lines(conn, batch.id)
        [payment] = await batches.batch_payments(conn, batch.id)
    by_programme = {line.programme_id: line for line in lines}
    gift, culture = by_programme[scheme.gift.id], by_programme[scheme.culture.id]
    assert (gift.gross_cents, gift.fee_cents, gift.vat_cents, gift.transactions) == (100_000, 7_900, 1_580, 3)
    assert (culture.gross_cents, culture.fee_cents, culture.vat_cents) == (20_000, 1_000, 200)
    assert payment.payout_cents == 109_320
    assert payment.payout_cents + sum(l.fee_cents + l.vat_cents for l in lines) == 120_000

    await run(engine, batches.approve, batch_id=batch.id, user_id=scheme.approver_id)
    files = await run(engine, batches.export, batch_id=batch.id, user_id=scheme.approver_id)
    xmlschema.XMLSchema(str(XSD)).validate(files["pain.001"].decode())
    assert b"<CtrlSum>1093.20</CtrlSum>" in files["pain.001"]
    assert files["csv"].decode().splitlines()[1].split(",")[8] == "109320"

    async with engine.begin() as conn:
        fee_income = await settlement_account(conn, owner_type="issuer", owner_id=scheme.issuer_id, purpose="fee_income")
        vat = await settlement_account(conn, owner_type="issuer", owner_id=scheme.issuer_id, purpose="vat_payable")
        merchant_eur = await conn.scalar(text("SELECT id FROM accounts WHERE kind = 'merchant' AND owner_id = :m "
                                              "AND unit = 'EUR'"), {"m": str(merchant_id)})
        assert (await check_ledger(conn)).ok
    assert (await scheme.balance(fee_income), await scheme.balance(vat)) == (8_900, 1_780)
    assert await scheme.balance(merchant_eur) == 0
    assert await scheme.balance(scheme.gift.reserve_account_id) == 0  # every voucher taken was paid out

    # Exporting again moves nothing and returns the same files.
    again = await run(engine, batches.export, batch_id=batch.id, user_id=scheme.approver_id)
    assert again == files
    assert await scheme.balance(fee_income) == 8_900


async def test_golden_example_with_the_fee_waived_by_the_town(engine, settlement_scheme):
    scheme = await settlement_scheme()
    await default_rules(scheme)
    merchant_id = await scheme.merchant()
    async with engine.begin() as conn:
        waiver = await create_waiver(conn, issuer_id=scheme.issuer_id, actor="test", sponsor_name="Ville d'Angoulême",
                                     merchant_ids=[merchant_id])
    await golden_month(scheme, merchant_id)
    batch = await run(engine, batches.prepare, issuer_id=scheme.issuer_id, period="2026-11", user_id=scheme.operator_id)
    async with engine.connect() as conn:
        lines = await batches.batch_lines(conn, batch.id)
        [payment] = await batches.batch_payments(conn, batch.id)
    assert sum(line.fee_cents for line in lines) == 8_900 and sum(line.vat_cents for line in lines) == 1_780
    assert sum(line.sponsor_cents for line in lines) == 10_680
    assert payment.payout_cents == 120_000
    await run(engine, batches.approve, batch_id=batch.id, user_id=scheme.second_operator_id)
    await run(engine, batches.export, batch_id=batch.id, user_id=scheme.approver_id)
    assert await scheme.balance(waiver.sponsor_account_id) == -10_680  # the town owes the fee
    async with engine.connect() as conn:
        assert (await check_ledger(conn)).ok


async def test_same_period_gives_the_same_batch_and_approval_needs_a_second_person(engine, settlement_scheme):
    scheme = await settlement_scheme()
    await default_rules(scheme)
    merchant_id = await scheme.merchant()
    await scheme.take(merchant_id, scheme.gift, 10_000, at(10, 10))
    first = await run(engine, batches.prepare, issuer_id=scheme.issuer_id, period="2026-10", user_id=scheme.operator_id)
    again = await run(engine, batches.prepare, issuer_id=scheme.issuer_id, period="2026-10", user_id=scheme.operator_id)
    assert again.id == first.id
    with pytest.raises(BatchInProgress):
        await run(engine, batches.prepare, issuer_id=scheme.issuer_id, period="2026-09", user_id=scheme.operator_id)
    with pytest.raises(SameApprover):
        await run(engine, batches.approve, batch_id=first.id, user_id=scheme.operator_id)
    with pytest.raises(BatchState):
        await run(engine, batches.export, batch_id=first.id, user_id=scheme.approver_id)
    approved = await run(engine, batches.approve, batch_id=first.id, user_id=scheme.approver_id)
    assert (approved.status, approved.approved_by) == ("approved", scheme.approver_id)
    rejected = await run(engine, batches.reject, batch_id=first.id, user_id=scheme.approver_id,
                         reason="wrong rule for culture")
    assert (rejected.status, rejected.rejected_reason, rejected.approved_by) == ("draft", "wrong rule for culture", None)
    await run(engine, batches.approve, batch_id=first.id, user_id=scheme.second_operator_id)
    same = await run(engine, batches.prepare, issuer_id=scheme.issuer_id, period="2026-10", user_id=scheme.operator_id)
    assert (same.id, same.status) == (first.id, "approved")
    async with engine.connect() as conn:
        events = (await conn.execute(text(
            "SELECT event_type FROM audit_inbox WHERE payload->>'batch_id' = :b ORDER BY id"), {"b": str(first.id)})
        ).scalars().all()
    assert events == ["settlement.batch_prepared", "settlement.batch_prepared", "settlement.batch_approved",
                      "settlement.batch_rejected", "settlement.batch_approved"]


async def test_only_back_office_roles_act_and_only_on_ended_periods(engine, settlement_scheme):
    scheme = await settlement_scheme()
    from api.auth import create_user

    async with engine.begin() as conn:
        resident = await create_user(conn, email=f"resident-{scheme.issuer_id}@x.test", password="resident-password",
                                     role="resident")
    with pytest.raises(NotAllowed):
        await run(engine, batches.prepare, issuer_id=scheme.issuer_id, period="2026-11", user_id=resident)
    with pytest.raises(NotAllowed):  # an approver approves; preparing is an operator's job
        await run(engine, batches.prepare, issuer_id=scheme.issuer_id, period="2026-11", user_id=scheme.approver_id)
    with pytest.raises(PeriodNotEnded):
        await run(engine, batches.prepare, issuer_id=scheme.issuer_id, period="2026-12", user_id=scheme.operator_id,
                  now=at(12, 31))


async def test_takings_without_a_fee_rule_are_refused_not_settled_for_free(engine, settlement_scheme):
    scheme = await settlement_scheme()
    merchant_id = await scheme.merchant()
    await scheme.take(merchant_id, scheme.gift, 1_000, at(11, 2))
    with pytest.raises(NoFeeRule):
        await run(engine, batches.prepare, issuer_id=scheme.issuer_id, period="2026-11", user_id=scheme.operator_id)


async def _settle(engine, scheme, period: str, now=None):
    batch = await run(engine, batches.prepare, issuer_id=scheme.issuer_id, period=period, user_id=scheme.operator_id,
                      now=now)
    await run(engine, batches.approve, batch_id=batch.id, user_id=scheme.approver_id)
    await run(engine, batches.export, batch_id=batch.id, user_id=scheme.approver_id, now=now)
    async with engine.connect() as conn:
        return batch, {p.merchant_id: p for p in await batches.batch_payments(conn, batch.id)}


async def test_late_items_refunds_counter_sales_negative_nets_and_returns_carry_forward(engine, settlement_scheme):
    scheme = await settlement_scheme()
    await default_rules(scheme)
    shop = await scheme.merchant()
    counter = await scheme.merchant(name="Comptoir de la Bulle", category="alimentation")

    # September: an ordinary month.
    sold = await scheme.take(shop, scheme.gift, 10_000, at(9, 10))
    september, paid = await _settle(engine, scheme, "2026-09")
    assert paid[shop].payout_cents == 10_000 - 790 - 158

    # A taking back-dated into September, written after September was settled: October takes it.
    await scheme.take(shop, scheme.gift, 5_000, at(9, 29))
    # October: the September sale is refunded (covered by October's takings): carried forward.
    await scheme.take(shop, scheme.gift, 20_000, at(10, 3))
    await scheme.refund(sold, at(10, 4))
    # The exchange counter sold 80.00 € of Bulles for cash: it owes them to the reserve.
    async with engine.begin() as conn:
        counter_account = await open_account(conn, kind=AccountKind.COUNTER, unit="EUR", owner_type="merchant",
                                             owner_id=counter)
        wallet = await open_account(conn, kind=AccountKind.WALLET, unit="BUL", owner_type="test")
        await transfer(conn, key=f"counter-{counter}", kind="wallet.counter_topup", postings=[
            Posting(counter_account, -8_000), Posting(scheme.bulle.reserve_account_id, 8_000),
            Posting(scheme.bulle.float_account_id, -8_000), Posting(wallet, 8_000)])
    await scheme.take(counter, scheme.gift, 3_000, at(10, 20))
    october, paid = await _settle(engine, scheme, "2026-10")
    async with engine.connect() as conn:
        lines = {(l.merchant_id, l.programme_id): l for l in await batches.batch_lines(conn, october.id)}
        claimed = await conn.scalar(text("SELECT batch_id FROM settlement_items i JOIN merchant_takings t "
                                         "ON t.id = i.taking_id WHERE t.effective_at = :e AND t.merchant_id = :m"),
                                    {"e": at(9, 29), "m": shop})
    assert claimed == october.id
    shop_line = lines[(shop, scheme.gift.id)]
    assert (shop_line.gross_cents, shop_line.refunds_cents) == (25_000, 10_000)
    assert paid[shop].payout_cents == 15_000 - 1_185 - 237
    # The counter's takings (30.00 € less fees) do not cover the 80.00 € it owes: nothing paid, carried.
    counter_net = 3_000 - 237 - 47 - 8_000
    assert (paid[counter].payout_cents, paid[counter].carried_out_cents) == (0, counter_net)
    assert await scheme.balance(counter_account) == 0

    # The shop's October transfer comes back (wrong IBAN); November pays it with November's takings.
    await run(engine, batches.mark_paid, batch_id=october.id, user_id=scheme.approver_id)
    returned = await run(engine, batches.mark_returned, batch_id=october.id, merchant_id=shop,
                         user_id=scheme.approver_id, reason="AC01 wrong IBAN")
    assert returned.status == "returned"
    with pytest.raises(Exception) as refused:
        await run(engine, batches.mark_returned, batch_id=october.id, merchant_id=shop, user_id=scheme.approver_id,
                  reason="again")
    assert getattr(refused.value, "code", None) == "payment_state"
    await scheme.take(shop, scheme.culture, 4_000, at(11, 5))
    await scheme.take(counter, scheme.gift, 10_000, at(11, 6))
    november, paid = await _settle(engine, scheme, "2026-11")
    assert paid[shop].carried_in_cents == 15_000 - 1_185 - 237
    assert paid[shop].payout_cents == 15_000 - 1_185 - 237 + 4_000 - 200 - 40
    assert paid[counter].carried_in_cents == counter_net
    assert paid[counter].payout_cents == 10_000 - 790 - 158 + counter_net
    async with engine.connect() as conn:
        assert (await check_ledger(conn)).ok
        events = (await conn.execute(text(
            "SELECT event_type FROM audit_inbox WHERE event_type = 'settlement.payment_returned' "
            "AND payload->>'merchant_id' = :m"), {"m": str(shop)})).scalars().all()
    assert events == ["settlement.payment_returned"]


async def test_a_weekly_programme_is_settled_by_week_and_a_monthly_one_by_month(engine, settlement_scheme, client,
                                                                              operator):
    scheme = await settlement_scheme()
    await default_rules(scheme)
    refused = await client.put(f"/settlement/programmes/{scheme.culture.id}/frequency", headers=operator,
                               json={"frequency": "hourly"})
    assert refused.status_code == 400
    changed = await client.put(f"/settlement/programmes/{scheme.culture.id}/frequency", headers=operator,
                               json={"frequency": "weekly"})
    assert changed.status_code == 200, changed.text
    merchant_id = await scheme.merchant()
    await scheme.take(merchant_id, scheme.gift, 10_000, at(11, 3))      # week 45, monthly programme
    await scheme.take(merchant_id, scheme.culture, 2_000, at(11, 3))    # week 45 (Tue 3 Nov)
    await scheme.take(merchant_id, scheme.culture, 3_000, at(11, 10))   # week 46
    week, paid = await _settle(engine, scheme, "2026-W45")
    async with engine.connect() as conn:
        lines = await batches.batch_lines(conn, week.id)
    assert [(l.programme_id, l.gross_cents) for l in lines] == [(scheme.culture.id, 2_000)]
    assert paid[merchant_id].payout_cents == 2_000 - 100 - 20
    month, paid = await _settle(engine, scheme, "2026-11")
    async with engine.connect() as conn:
        lines = await batches.batch_lines(conn, month.id)
    assert [(l.programme_id, l.gross_cents) for l in lines] == [(scheme.gift.id, 10_000)]
    week, _ = await _settle(engine, scheme, "2026-W46")
    async with engine.connect() as conn:
        assert [l.gross_cents for l in await batches.batch_lines(conn, week.id)] == [3_000]


async def test_settled_records_cannot_be_rewritten(engine, settlement_scheme):
    scheme = await settlement_scheme()
    await default_rules(scheme)
    merchant_id = await scheme.merchant()
    await scheme.take(merchant_id, scheme.gift, 10_000, at(8, 10))
    batch, _ = await _settle(engine, scheme, "2026-08")
    for statement in ("UPDATE settlement_payments SET payout_cents = payout_cents + 100 WHERE batch_id = :b",
                      "DELETE FROM settlement_payments WHERE batch_id = :b",
                      "DELETE FROM settlement_items WHERE batch_id = :b",
                      "UPDATE settlement_lines SET fee_cents = 0 WHERE batch_id = :b",
                      "DELETE FROM settlement_files WHERE batch_id = :b"):
        with pytest.raises(Exception, match="append-only|only the status"):
            async with engine.begin() as conn:
                await conn.execute(text(statement), {"b": batch.id})


async def test_a_shop_to_be_paid_without_a_valid_iban_stops_the_preparation(engine, settlement_scheme):
    scheme = await settlement_scheme()
    await default_rules(scheme)
    merchant_id = await scheme.merchant(iban=None)
    await scheme.take(merchant_id, scheme.gift, 10_000, at(7, 10))
    with pytest.raises(BankDetailsInvalid) as refused:
        await run(engine, batches.prepare, issuer_id=scheme.issuer_id, period="2026-07", user_id=scheme.operator_id)
    assert refused.value.details["merchant_ids"] == [merchant_id] and refused.value.message_fr
    async with engine.connect() as conn:
        assert await conn.scalar(text("SELECT count(*) FROM settlement_batches WHERE issuer_id = :i"),
                                 {"i": scheme.issuer_id}) == 0  # nothing half-written


async def test_an_issuer_without_its_own_iban_cannot_prepare_payouts(engine, settlement_scheme):
    scheme = await settlement_scheme()
    await default_rules(scheme)
    merchant_id = await scheme.merchant()
    await scheme.take(merchant_id, scheme.gift, 10_000, at(7, 10))
    async with engine.begin() as conn:
        await conn.execute(text("UPDATE issuers SET debtor_iban = NULL WHERE id = :i"), {"i": scheme.issuer_id})
    with pytest.raises(BankDetailsInvalid):
        await run(engine, batches.prepare, issuer_id=scheme.issuer_id, period="2026-07", user_id=scheme.operator_id)


async def test_concurrent_preparations_of_a_period_make_one_batch_and_claim_each_taking_once(engine,
                                                                                           settlement_scheme):
    scheme = await settlement_scheme()
    await default_rules(scheme)
    merchant_id = await scheme.merchant()
    for day in range(1, 11):
        await scheme.take(merchant_id, scheme.gift, 1_000 * day, at(6, day))
    prepared = await asyncio.gather(*(
        run(engine, batches.prepare, issuer_id=scheme.issuer_id, period="2026-06", user_id=user)
        for user in (scheme.operator_id, scheme.second_operator_id) * 3))
    assert len({batch.id for batch in prepared}) == 1
    async with engine.connect() as conn:
        claimed = await conn.scalar(text("SELECT count(*) FROM settlement_items WHERE batch_id = :b"),
                                    {"b": prepared[0].id})
        [payment] = await batches.batch_payments(conn, prepared[0].id)
    assert claimed == 10 and payment.payout_cents == 55_000 - 4_345 - 869


def test_pooled_collection_nets_programmes_sharing_one_account():
    from settlement.batches import pooled_collects

    assert pooled_collects([(1, 10_000), (2, 2_000)], 12_000) == {1: 10_000, 2: 2_000}
    # A gift voucher refunded out of culture takings: gift takes its units back, culture pays for it.
    assert pooled_collects([(1, -10_000), (2, 10_000)], 0) == {1: -10_000, 2: 10_000}
    assert pooled_collects([(1, -3_000), (2, 10_000)], 7_000) == {1: -3_000, 2: 10_000}
    # More refunded than taken: nothing is collected in total, the rest is carried.
    assert pooled_collects([(1, -10_000), (2, 4_000)], 0) == {1: -4_000, 2: 4_000}
    # The account holds less than is due (refunds after the period's end): collect what it holds.
    assert pooled_collects([(1, 10_000), (2, 5_000)], 12_000) == {1: 10_000, 2: 2_000}


async def test_a_settled_gift_voucher_refunded_from_culture_takings_stays_backed(engine, settlement_scheme):
    scheme = await settlement_scheme()
    await default_rules(scheme)
    shop = await scheme.merchant()
    sold = await scheme.take(shop, scheme.gift, 10_000, at(4, 10))
    april, paid = await _settle(engine, scheme, "2026-04")
    assert paid[shop].payout_cents == 10_000 - 790 - 158
    # May: 100.00 € of culture vouchers; the April gift voucher is refunded (the shop's account covers it).
    await scheme.take(shop, scheme.culture, 10_000, at(5, 3))
    await scheme.refund(sold, at(5, 4))
    # June 1st, before May is prepared: another culture voucher, refunded at once.
    late = await scheme.take(shop, scheme.culture, 3_000, at(6, 1))
    await scheme.refund(late, at(6, 1, 14))
    may, paid = await _settle(engine, scheme, "2026-05")
    async with engine.connect() as conn:
        lines = {l.programme_id: l for l in await batches.batch_lines(conn, may.id)}
        report = await check_ledger(conn)
    assert (lines[scheme.gift.id].collect_cents, lines[scheme.culture.id].collect_cents) == (-10_000, 10_000)
    # The shop took 100.00 and gave back 100.00: it owes May's culture fee, carried to June.
    assert (paid[shop].payout_cents, paid[shop].carried_out_cents) == (0, -500 - 100)
    assert report.ok, report.discrepancies
    # Each reserve backs its own vouchers: the refunded gift voucher (100.00) and the culture
    # voucher refunded on June 1st (30.00, the shop's June takings not being collected yet).
    assert await scheme.balance(scheme.gift.reserve_account_id) == 10_000
    assert await scheme.balance(scheme.culture.reserve_account_id) == 3_000
    june, paid = await _settle(engine, scheme, "2026-06")
    assert (paid[shop].carried_in_cents, paid[shop].carried_out_cents) == (-600, -600)  # June: taken, refunded
