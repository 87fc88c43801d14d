"""Fee rules and rounding: the scheme's golden example, specificity, ties, waivers."""

from __future__ import annotations

import uuid
from datetime import date

import pytest
from hypothesis import given, strategies as st
from sqlalchemy import text

from ledger.scheme import create_issuer, create_merchant, create_programme
from settlement.errors import FeeRuleConflict, InvalidFeeRule
from settlement.fees import FeeRule, compute_fee, create_rule, create_waiver, half_up, list_rules, select_rule


def rule(rate_bp: int, *, vat_rate_bp: int = 2000, fixed_cents: int = 0, min_cents: int = 0,
         max_cents: int | None = None, programme_id=None, category=None, merchant_id=None, rule_id=1,
         valid_from=date(2000, 1, 1), valid_until=None) -> FeeRule:
    return FeeRule(rule_id, 1, "takings", programme_id, category, merchant_id, rate_bp, vat_rate_bp, fixed_cents,
                   min_cents, max_cents, valid_from, valid_until)


def test_golden_example_gift_and_culture_month():
    gift = compute_fee(rule(790), basis_cents=100_000, transactions=12)
    culture = compute_fee(rule(500), basis_cents=20_000, transactions=3)
    assert (gift.fee_cents, gift.vat_cents) == (7_900, 1_580)
    assert (culture.fee_cents, culture.vat_cents) == (1_000, 200)
    payout = 120_000 - gift.fee_cents - gift.vat_cents - culture.fee_cents - culture.vat_cents
    assert payout == 109_320


def test_half_up_rounds_the_half_cent_up_and_the_rest_to_nearest():
    assert half_up(5, 10) == 1 and half_up(4, 10) == 0 and half_up(15, 10) == 2 and half_up(14999, 10000) == 1


def test_fee_is_rounded_once_on_the_period_total_not_per_transaction():
    # 3 takings of 0.19 € at 7.9%: per transaction 1.501 c → 2 c each (6 c); on the total 4.503 c → 5 c.
    assert compute_fee(rule(790), basis_cents=57, transactions=3).fee_cents == 5
    # VAT on the rounded fee: 5 c × 20% = 1 c.
    assert compute_fee(rule(790), basis_cents=57, transactions=3).vat_cents == 1


def test_fixed_fee_minimum_and_maximum_per_period():
    assert compute_fee(rule(0, fixed_cents=15), basis_cents=10_000, transactions=4).fee_cents == 60
    assert compute_fee(rule(100, min_cents=500), basis_cents=10_000, transactions=1).fee_cents == 500
    assert compute_fee(rule(790, max_cents=2_000), basis_cents=1_000_000, transactions=9).fee_cents == 2_000
    assert compute_fee(rule(100, min_cents=500), basis_cents=0, transactions=0).fee_cents == 0


@given(st.lists(st.tuples(st.integers(0, 10**9), st.integers(0, 10_000), st.integers(0, 5_000)), max_size=50))
def test_payout_plus_fees_plus_vat_is_gross_exactly(lines):
    gross = payout = fees = vat = 0
    for basis, rate_bp, vat_bp in lines:
        fee = compute_fee(rule(rate_bp, vat_rate_bp=vat_bp), basis_cents=basis, transactions=1)
        gross += basis
        fees += fee.fee_cents
        vat += fee.vat_cents
        payout += basis - fee.fee_cents - fee.vat_cents
        assert fee.fee_cents == half_up(basis * rate_bp, 10_000)
        assert fee.vat_cents == half_up(fee.fee_cents * vat_bp, 10_000)
    assert payout + fees + vat == gross


def test_most_specific_rule_wins():
    rules = [rule(790, programme_id=7, rule_id=1), rule(500, category="culture", rule_id=2),
             rule(300, merchant_id=42, rule_id=3), rule(100, programme_id=7, category="culture", rule_id=4)]
    pick = lambda merchant, category: select_rule(rules, kind="takings", day=date(2026, 11, 1), programme_id=7,
                                                   category=category, merchant_id=merchant).id
    assert pick(1, "bakery") == 1
    assert pick(1, "culture") == 4
    assert pick(42, "culture") == 3
    assert select_rule(rules, kind="takings", day=date(2026, 11, 1), programme_id=8, category="bakery",
                       merchant_id=1) is None


def test_the_rule_in_force_on_the_first_day_of_the_period_applies():
    rules = [rule(790, rule_id=1, valid_until=date(2026, 12, 1)), rule(500, rule_id=2, valid_from=date(2026, 12, 1))]
    pick = lambda day: select_rule(rules, kind="takings", day=day, programme_id=1, category=None, merchant_id=1).id
    assert pick(date(2026, 11, 1)) == 1 and pick(date(2026, 12, 1)) == 2


@pytest.fixture(scope="module")
async def scheme(engine):
    async with engine.begin() as conn:
        issuer_id = await create_issuer(conn, name=f"Fees {uuid.uuid4().hex[:6]}", siren="732829320")
        programme = await create_programme(conn, issuer_id=issuer_id, kind="gift", name="Gift", unit="EUR")
        merchant_id, _ = await create_merchant(conn, issuer_id=issuer_id, legal_name="Shop SARL", trade_name="Shop",
                                               units=["EUR"])
    return issuer_id, programme.id, merchant_id


async def test_a_rule_with_the_same_scope_and_overlapping_dates_is_refused(engine, scheme):
    issuer_id, programme_id, merchant_id = scheme
    async with engine.begin() as conn:
        await create_rule(conn, issuer_id=issuer_id, actor="t", rate_bp=790, programme_id=programme_id,
                          valid_from=date(2026, 1, 1), valid_until=date(2027, 1, 1))
    with pytest.raises(FeeRuleConflict):
        async with engine.begin() as conn:
            await create_rule(conn, issuer_id=issuer_id, actor="t", rate_bp=500, programme_id=programme_id,
                              valid_from=date(2026, 6, 1))
    async with engine.begin() as conn:
        # The next year, or a narrower scope, is no tie.
        await create_rule(conn, issuer_id=issuer_id, actor="t", rate_bp=500, programme_id=programme_id,
                          valid_from=date(2027, 1, 1))
        await create_rule(conn, issuer_id=issuer_id, actor="t", rate_bp=300, programme_id=programme_id,
                          merchant_id=merchant_id, valid_from=date(2026, 1, 1))
        assert [r.rate_bp for r in await list_rules(conn, issuer_id)] == [790, 500, 300]


async def test_nonsense_rules_are_refused(engine, scheme):
    issuer_id, programme_id, _ = scheme
    for bad in ({"rate_bp": -1}, {"rate_bp": 10_001}, {"rate_bp": 100, "min_cents": 500, "max_cents": 100},
                {"rate_bp": 100, "valid_from": date(2026, 2, 1), "valid_until": date(2026, 1, 1)},
                {"rate_bp": 100, "kind": "tips"}):
        with pytest.raises(InvalidFeeRule):
            async with engine.begin() as conn:
                await create_rule(conn, issuer_id=issuer_id, actor="t", category="x", **bad)


async def test_a_waiver_opens_its_sponsor_account(engine, scheme):
    issuer_id, _, merchant_id = scheme
    async with engine.begin() as conn:
        waiver = await create_waiver(conn, issuer_id=issuer_id, actor="t", sponsor_name="Ville",
                                     merchant_ids=[merchant_id])
        kind = await conn.scalar(text("SELECT kind FROM accounts WHERE id = :id"),
                                 {"id": waiver.sponsor_account_id})
    assert kind == "sponsor"
    assert waiver.covers(day=date(2026, 11, 1), merchant_id=merchant_id, programme_id=1)
    assert not waiver.covers(day=date(2026, 11, 1), merchant_id=merchant_id + 1, programme_id=1)
