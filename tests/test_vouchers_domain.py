"""Programme rules and the voucher lifecycle on the real ledger: issue, find, revoke and
reissue, extend, expire into breakage."""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import text

from fixtures_vouchers import audit_events
from ledger.check import check_ledger
from ledger.errors import InsufficientFunds
from ledger.programmes import (
    CATEGORY_EXCLUDED,
    CATEGORY_NOT_ALLOWED,
    MERCHANT_DENIED,
    InvalidProgrammeRules,
    ProgrammeRules,
    acceptance,
    update_programme,
)
from ledger.tokens import verify_token
from ledger.transfers import Posting, transfer
from ledger.vouchers import (
    Expired,
    FaceValueOutOfRange,
    NotExtendable,
    Revoked,
    VoucherLine,
    check_usable,
    expire_due,
    extend_validity,
    get_voucher,
    public_keys,
    revoke_and_reissue,
    sell_vouchers,
    voucher_for_code,
    voucher_for_token,
)


async def _balance(engine, account_id: int) -> int:
    async with engine.connect() as conn:
        return await conn.scalar(text("SELECT balance_cents FROM accounts WHERE id = :id"), {"id": account_id})


def _rules(**overrides) -> ProgrammeRules:
    values = dict(
        id=1, issuer_id=1, kind="culture", name="Chèque culture", unit="EUR", float_account_id=1,
        reserve_account_id=2, bank_account_id=3, breakage_account_id=4, face_value_min_cents=100,
        face_value_max_cents=10_000, validity_months=12, valid_until=None, partial_redemption=True,
        categories_allowed=None, categories_excluded=(), merchants_allowed=(), merchants_denied=(),
        second_language="en", texts={}, purchase_fee_bp=0,
    )
    return ProgrammeRules(**{**values, **overrides})


def test_a_culture_programme_accepts_only_its_categories_and_listed_merchants():
    culture = _rules(categories_allowed=("bookshop", "cinema"), merchants_allowed=(77,), merchants_denied=(13,))
    assert acceptance(culture, "bookshop", 1) is None
    assert acceptance(culture, "bakery", 1) == CATEGORY_NOT_ALLOWED
    assert acceptance(culture, None, 1) == CATEGORY_NOT_ALLOWED
    assert acceptance(culture, "bakery", 77) is None
    assert acceptance(culture, "bookshop", 13) == MERCHANT_DENIED


def test_a_gift_programme_excluding_supermarkets_accepts_everything_else():
    gift = _rules(kind="gift", categories_excluded=("supermarket",))
    assert acceptance(gift, "supermarket", 5) == CATEGORY_EXCLUDED
    assert acceptance(gift, "bakery", 5) is None
    assert acceptance(gift, None, 5) is None


@given(category=st.sampled_from(["bakery", "bookshop", "supermarket", None]), merchant_id=st.integers(1, 30),
       allowed=st.sets(st.integers(1, 30)), denied=st.sets(st.integers(1, 30)))
def test_a_denied_merchant_is_never_accepted_and_an_allowed_one_always_is(category, merchant_id, allowed, denied):
    allowed -= denied
    rules = _rules(categories_allowed=("bookshop",), categories_excluded=("supermarket",),
                   merchants_allowed=tuple(allowed), merchants_denied=tuple(denied))
    verdict = acceptance(rules, category, merchant_id)
    if merchant_id in denied:
        assert verdict == MERCHANT_DENIED
    elif merchant_id in allowed:
        assert verdict is None
    else:
        assert (verdict is None) == (category == "bookshop")


def test_expiry_is_the_end_of_the_last_day_in_paris():
    rules = _rules(validity_months=12)
    issued = datetime(2026, 2, 28, 23, 30, tzinfo=timezone.utc)  # already 1 March in Paris
    assert rules.expiry_for(issued) == datetime(2027, 3, 1, 23, 0, tzinfo=timezone.utc)
    assert _rules(validity_months=1).expiry_for(datetime(2026, 1, 31, 12, tzinfo=timezone.utc)) == \
        datetime(2026, 2, 28, 23, 0, tzinfo=timezone.utc)
    fixed = _rules(validity_months=None, valid_until=date(2026, 7, 14))
    assert fixed.expiry_for(issued) == datetime(2026, 7, 14, 22, 0, tzinfo=timezone.utc)


async def test_a_sold_voucher_has_a_verifiable_token_a_code_and_its_value_on_the_ledger(engine, issue_voucher):
    issued = await issue_voucher(2500)
    assert await _balance(engine, issued.account_id) == 2500
    async with engine.connect() as conn:
        claims = verify_token(issued.token, await public_keys(conn))
        by_token = await voucher_for_token(conn, issued.token)
        by_code = await voucher_for_code(conn, issued.code.lower())
        report = await check_ledger(conn)
    assert claims.voucher_id == issued.id == by_token.id == by_code.id
    assert claims.programme_id == issued.programme_id
    assert report.ok, report.discrepancies


async def test_amounts_outside_the_programme_limits_issue_nothing(engine, make_programme):
    programme = await make_programme(face_value_min_cents=500, face_value_max_cents=10_000)
    async with engine.connect() as conn:
        before = await conn.scalar(text("SELECT count(*) FROM vouchers"))
    for amount in (0, -100, 499, 10_001):
        with pytest.raises(FaceValueOutOfRange):
            async with engine.begin() as conn:
                await sell_vouchers(conn, programme=programme, key=f"bad-{amount}", actor="test",
                                    lines=[VoucherLine(1000), VoucherLine(amount)])
    async with engine.connect() as conn:
        assert await conn.scalar(text("SELECT count(*) FROM vouchers")) == before


async def test_a_lost_voucher_is_revoked_and_its_balance_moves_to_a_new_one(engine, issue_voucher):
    issued = await issue_voucher(3000)
    async with engine.begin() as conn:
        merchant = await conn.scalar(text(
            "INSERT INTO accounts (kind, unit, floor_cents) VALUES ('merchant', 'EUR', 0) RETURNING id"))
        await transfer(conn, key=f"spend-{issued.id}", kind="voucher.redeem",
                       postings=[Posting(issued.account_id, -1200), Posting(merchant, 1200)])
    async with engine.begin() as conn:
        old, new = await revoke_and_reissue(conn, issued.id, reason="lost in the post", actor="operator:1")
    assert old.status == "revoked" and old.replaced_by == new.id and new.reissue_of == old.id
    assert new.code != old.code and new.token != old.token and new.expires_at == old.expires_at
    assert await _balance(engine, old.account_id) == 0
    assert await _balance(engine, new.account_id) == 1800
    async with engine.connect() as conn:
        with pytest.raises(Revoked) as refused:
            check_usable(await voucher_for_token(conn, issued.token))
        check_usable(await voucher_for_token(conn, new.token))
        revoked = [e for e in await audit_events(conn, "voucher.revoked") if e["voucher_id"] == issued.id]
    assert refused.value.code == "revoked" and refused.value.details["replaced_by"] == new.id
    assert revoked == [{"voucher_id": issued.id, "reason": "lost in the post", "moved_cents": 1800,
                        "replaced_by": new.id}]
    with pytest.raises(Revoked):
        async with engine.begin() as conn:
            await revoke_and_reissue(conn, issued.id, reason="again", actor="operator:1")


async def test_expired_vouchers_move_their_balance_to_breakage_once(engine, issue_voucher, make_programme):
    programme = await make_programme(validity_months=1)
    first = await issue_voucher(1500, programme=programme)
    second = await issue_voucher(700, programme=programme)
    later = first.expires_at + timedelta(seconds=1)
    async with engine.begin() as conn:
        run = await expire_due(conn, now=later)
    assert run.vouchers >= 2 and run.moved_cents >= 2200
    assert await _balance(engine, first.account_id) == 0
    assert await _balance(engine, programme.breakage_account_id) == 2200
    async with engine.begin() as conn:
        again = await expire_due(conn, now=later)
        voucher = await get_voucher(conn, second.id)
        report = await check_ledger(conn)
    assert again.vouchers == 0 and voucher.status == "expired"
    assert report.ok, report.discrepancies
    with pytest.raises(Expired):
        check_usable(voucher)


async def test_the_operator_extends_validity_and_the_token_is_re_signed(engine, issue_voucher):
    issued = await issue_voucher(1000)
    later = issued.expires_at + timedelta(days=90)
    async with engine.begin() as conn:
        extended = await extend_validity(conn, issued.id, expires_at=later, actor="operator:1")
        keys = await public_keys(conn)
    assert extended.expires_at == later
    assert verify_token(extended.token, keys).expires_at == later
    with pytest.raises(NotExtendable):
        async with engine.begin() as conn:
            await extend_validity(conn, issued.id, expires_at=later - timedelta(days=1), actor="operator:1")


async def test_a_voucher_never_goes_below_zero(engine, issue_voucher):
    issued = await issue_voucher(500)
    async with engine.begin() as conn:
        merchant = await conn.scalar(text(
            "INSERT INTO accounts (kind, unit, floor_cents) VALUES ('merchant', 'EUR', 0) RETURNING id"))
    with pytest.raises(InsufficientFunds):
        async with engine.begin() as conn:
            await transfer(conn, key=f"overspend-{issued.id}", kind="voucher.redeem",
                           postings=[Posting(issued.account_id, -501), Posting(merchant, 501)])


async def test_programme_changes_are_checked_and_audited(engine, make_programme):
    programme = await make_programme()
    async with engine.begin() as conn:
        changed = await update_programme(conn, programme.id, actor="operator:1", categories_excluded=["supermarket"])
        event = (await audit_events(conn, "programme.changed"))[-1]
    assert changed.categories_excluded == ("supermarket",)
    assert event["changes"]["categories_excluded"] == {"before": [], "after": ["supermarket"]}
    with pytest.raises(InvalidProgrammeRules):
        async with engine.begin() as conn:
            await update_programme(conn, programme.id, actor="operator:1", face_value_min_cents=900_000)


async def test_the_urssaf_ceiling_counts_per_beneficiary_and_uses_the_latest_known_year(engine, make_programme):
    from ledger.employers import create_employer
    from ledger.order_lines import LineIn
    from ledger.orders import create_order, gift_ceiling, quote, replace_lines

    programme = await make_programme(face_value_max_cents=30_000)
    async with engine.begin() as conn:
        employer = await create_employer(conn, issuer_id=programme.issuer_id, name="Atelier", siret="73282932000074",
                                         actor="test")
        order = await create_order(conn, employer_id=employer.id, programme_id=programme.id, event="christmas",
                                   actor="test")
        await replace_lines(conn, order.id, [LineIn("Ada Lovelace", "ada@example.org", 12_000),
                                             LineIn("Bob", None, 20_000),
                                             LineIn("ada lovelace", "ADA@example.org", 10_000)], actor="test")
        found = await quote(conn, order)
        assert await gift_ceiling(conn, 2031) == (2026, 20_000)
        assert await gift_ceiling(conn, 2025) == (2025, 19_600)
    (warning,) = found.warnings
    assert (warning.line_nos, warning.amount_cents, warning.ceiling_cents) == ((1, 3), 22_000, 20_000)
