"""Fee rules, sponsor waivers and the fee arithmetic.

Rounding (the one place it happens): the fee of a merchant-programme line is computed on the
line's total for the period, never per transaction. percentage part = total × rate, rounded
half-up to the cent; plus the fixed fee per transaction; then the period minimum and maximum.
VAT is computed on that rounded fee, again half-up to the cent. Every amount is an integer
number of cents, so payout + fee + VAT equals the gross total exactly, line by line and summed.

A rule is scoped to a programme, a merchant category and/or one merchant; the most specific
rule in force on a period's first day applies to the whole period (merchant 4 > category 2 >
programme 1, summed). Two rules of the same scope whose dates overlap are refused at creation,
so there is never a tie to break.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from audit.chain import append
from ledger.accounts import AccountKind, open_account
from ledger.errors import NotFound
from settlement.errors import FeeRuleConflict, InvalidFeeRule

BASIS_POINTS = 10_000
RULE_KINDS = ("takings", "reconversion")
_LOCK_RULES = 0x46454552  # "FEER": serialises rule creation per issuer


def half_up(numerator: int, denominator: int) -> int:
    """numerator / denominator rounded half-up, for numerator >= 0 and denominator > 0."""
    assert numerator >= 0 and denominator > 0
    return (2 * numerator + denominator) // (2 * denominator)


@dataclass(frozen=True, slots=True)
class FeeRule:
    id: int
    issuer_id: int
    kind: str
    programme_id: int | None
    category: str | None
    merchant_id: int | None
    rate_bp: int
    vat_rate_bp: int
    fixed_cents: int
    min_cents: int
    max_cents: int | None
    valid_from: date
    valid_until: date | None

    @property
    def specificity(self) -> int:
        return (4 if self.merchant_id else 0) + (2 if self.category else 0) + (1 if self.programme_id else 0)

    def in_force(self, day: date) -> bool:
        return self.valid_from <= day and (self.valid_until is None or day < self.valid_until)

    def matches(self, *, kind: str, programme_id: int, category: str | None, merchant_id: int) -> bool:
        return (
            self.kind == kind
            and self.programme_id in (None, programme_id)
            and self.category in (None, category)
            and self.merchant_id in (None, merchant_id)
        )


@dataclass(frozen=True, slots=True)
class Fee:
    fee_cents: int  # excluding VAT
    vat_cents: int


def compute_fee(rule: FeeRule, *, basis_cents: int, transactions: int) -> Fee:
    """The fee of one merchant-programme line for a whole period (see the module's rounding)."""
    if transactions <= 0 and basis_cents <= 0:
        return Fee(0, 0)
    fee = half_up(max(basis_cents, 0) * rule.rate_bp, BASIS_POINTS) + rule.fixed_cents * max(transactions, 0)
    fee = max(fee, rule.min_cents)
    if rule.max_cents is not None:
        fee = min(fee, rule.max_cents)
    return Fee(fee, half_up(fee * rule.vat_rate_bp, BASIS_POINTS))


def select_rule(
    rules: list[FeeRule], *, kind: str, day: date, programme_id: int, category: str | None, merchant_id: int
) -> FeeRule | None:
    """The most specific rule in force on ``day`` (creation refuses ties, so it is unique)."""
    found = [
        rule for rule in rules
        if rule.in_force(day) and rule.matches(kind=kind, programme_id=programme_id, category=category,
                                               merchant_id=merchant_id)
    ]
    return max(found, key=lambda rule: rule.specificity, default=None)


async def _check_scope(conn: AsyncConnection, *, issuer_id: int, programme_id: int | None,
                       merchant_ids: list[int]) -> None:
    """The issuer exists, and the programme and merchants named are its own."""
    found = (await conn.execute(text(
        """
        SELECT EXISTS (SELECT 1 FROM issuers WHERE id = :issuer),
               CAST(:programme AS bigint) IS NULL
               OR EXISTS (SELECT 1 FROM programmes WHERE id = :programme AND issuer_id = :issuer),
               (SELECT count(*) FROM merchants WHERE id = ANY(CAST(:merchants AS bigint[])) AND issuer_id = :issuer)
        """), {"issuer": issuer_id, "programme": programme_id, "merchants": merchant_ids})).one()
    if not found[0]:
        raise NotFound("no issuer has this id", message_fr="Aucun émetteur ne porte ce numéro.", issuer_id=issuer_id)
    if not found[1] or found[2] != len(set(merchant_ids)):
        raise InvalidFeeRule("the programme and merchants named must be the issuer's own",
                             message_fr="Le programme et les commerçants cités doivent être ceux de l'émetteur.",
                             programme_id=programme_id, merchant_ids=merchant_ids)


_RULE_COLUMNS = (
    "id, issuer_id, kind, programme_id, category, merchant_id, rate_bp, vat_rate_bp, fixed_cents, "
    "min_cents, max_cents, valid_from, valid_until"
)


async def list_rules(conn: AsyncConnection, issuer_id: int) -> list[FeeRule]:
    rows = await conn.execute(
        text(f"SELECT {_RULE_COLUMNS} FROM fee_rules WHERE issuer_id = :issuer ORDER BY id"), {"issuer": issuer_id}
    )
    return [FeeRule(*row) for row in rows]


async def create_rule(
    conn: AsyncConnection,
    *,
    issuer_id: int,
    actor: str,
    rate_bp: int,
    kind: str = "takings",
    programme_id: int | None = None,
    category: str | None = None,
    merchant_id: int | None = None,
    vat_rate_bp: int = 2000,
    fixed_cents: int = 0,
    min_cents: int = 0,
    max_cents: int | None = None,
    valid_from: date = date(2000, 1, 1),
    valid_until: date | None = None,
) -> FeeRule:
    if kind not in RULE_KINDS:
        raise InvalidFeeRule("kind is takings or reconversion", message_fr="Le type est takings ou reconversion.",
                             kind=kind)
    for name, value, top in (("rate_bp", rate_bp, BASIS_POINTS), ("vat_rate_bp", vat_rate_bp, BASIS_POINTS),
                             ("fixed_cents", fixed_cents, 10**8), ("min_cents", min_cents, 10**11)):
        if type(value) is not int or not 0 <= value <= top:
            raise InvalidFeeRule(f"{name} is a whole number from 0 to {top}",
                                 message_fr=f"{name} est un nombre entier de 0 à {top}.", **{name: value})
    if max_cents is not None and (type(max_cents) is not int or not min_cents <= max_cents <= 10**11):
        raise InvalidFeeRule("max_cents is at least min_cents", message_fr="Le maximum est au moins égal au minimum.",
                             max_cents=max_cents)
    if valid_until is not None and valid_until <= valid_from:
        raise InvalidFeeRule("valid_until comes after valid_from", message_fr="La fin de validité suit le début.",
                             valid_until=str(valid_until))
    await _check_scope(conn, issuer_id=issuer_id, programme_id=programme_id,
                       merchant_ids=[merchant_id] if merchant_id is not None else [])
    await conn.execute(text("SELECT pg_advisory_xact_lock(:space, CAST(:issuer AS int))"),
                       {"space": _LOCK_RULES, "issuer": issuer_id})
    clash = await conn.scalar(
        text(
            """
            SELECT id FROM fee_rules
            WHERE issuer_id = :issuer AND kind = :kind
              AND programme_id IS NOT DISTINCT FROM :programme_id
              AND category IS NOT DISTINCT FROM :category
              AND merchant_id IS NOT DISTINCT FROM :merchant_id
              AND daterange(valid_from, valid_until) && daterange(:valid_from, :valid_until)
            ORDER BY id LIMIT 1
            """
        ),
        {"issuer": issuer_id, "kind": kind, "programme_id": programme_id, "category": category,
         "merchant_id": merchant_id, "valid_from": valid_from, "valid_until": valid_until},
    )
    if clash is not None:
        raise FeeRuleConflict(conflicting_rule_id=clash)
    row = (
        await conn.execute(
            text(
                f"""
                INSERT INTO fee_rules (issuer_id, kind, programme_id, category, merchant_id, rate_bp,
                    vat_rate_bp, fixed_cents, min_cents, max_cents, valid_from, valid_until, created_by)
                VALUES (:issuer, :kind, :programme_id, :category, :merchant_id, :rate_bp, :vat_rate_bp,
                        :fixed_cents, :min_cents, :max_cents, :valid_from, :valid_until, :actor)
                RETURNING {_RULE_COLUMNS}
                """
            ),
            {"issuer": issuer_id, "kind": kind, "programme_id": programme_id, "category": category,
             "merchant_id": merchant_id, "rate_bp": rate_bp, "vat_rate_bp": vat_rate_bp,
             "fixed_cents": fixed_cents, "min_cents": min_cents, "max_cents": max_cents,
             "valid_from": valid_from, "valid_until": valid_until, "actor": actor},
        )
    ).one()
    rule = FeeRule(*row)
    await append(conn, event_type="settlement.fee_rule_created", actor=actor, payload={
        "rule_id": rule.id, "issuer_id": issuer_id, "kind": kind, "programme_id": programme_id,
        "category": category, "merchant_id": merchant_id, "rate_bp": rate_bp, "vat_rate_bp": vat_rate_bp,
        "fixed_cents": fixed_cents, "min_cents": min_cents, "max_cents": max_cents,
        "valid_from": valid_from.isoformat(), "valid_until": valid_until.isoformat() if valid_until else None,
    })
    return rule


@dataclass(frozen=True, slots=True)
class Waiver:
    id: int
    issuer_id: int
    sponsor_name: str
    sponsor_account_id: int
    merchant_ids: tuple[int, ...] | None
    programme_id: int | None
    valid_from: date
    valid_until: date | None

    def covers(self, *, day: date, merchant_id: int, programme_id: int) -> bool:
        return (
            self.valid_from <= day and (self.valid_until is None or day < self.valid_until)
            and (self.merchant_ids is None or merchant_id in self.merchant_ids)
            and (self.programme_id is None or self.programme_id == programme_id)
        )


async def create_waiver(
    conn: AsyncConnection,
    *,
    issuer_id: int,
    actor: str,
    sponsor_name: str,
    merchant_ids: list[int] | None = None,
    programme_id: int | None = None,
    valid_from: date = date(2000, 1, 1),
    valid_until: date | None = None,
) -> Waiver:
    """The sponsor (e.g. the town) pays the fee of these merchants, or of this programme's campaign."""
    if not merchant_ids and programme_id is None:
        raise InvalidFeeRule("a waiver names merchants, a programme, or both",
                             message_fr="Une exonération désigne des commerçants, un programme, ou les deux.")
    if valid_until is not None and valid_until <= valid_from:
        raise InvalidFeeRule("valid_until comes after valid_from", message_fr="La fin de validité suit le début.",
                             valid_until=str(valid_until))
    await _check_scope(conn, issuer_id=issuer_id, programme_id=programme_id, merchant_ids=list(merchant_ids or []))
    # The sponsor's account goes negative by what the sponsor owes the scheme (kind sponsor: no floor).
    account_id = await open_account(conn, kind=AccountKind.SPONSOR, unit="EUR", owner_type="issuer",
                                    owner_id=issuer_id)
    waiver_id = await conn.scalar(
        text(
            """
            INSERT INTO fee_waivers (issuer_id, sponsor_name, sponsor_account_id, merchant_ids, programme_id,
                                     valid_from, valid_until, created_by)
            VALUES (:issuer, :name, :account, :merchants, :programme, :valid_from, :valid_until, :actor)
            RETURNING id
            """
        ),
        {"issuer": issuer_id, "name": sponsor_name, "account": account_id,
         "merchants": sorted(merchant_ids) if merchant_ids else None, "programme": programme_id,
         "valid_from": valid_from, "valid_until": valid_until, "actor": actor},
    )
    await append(conn, event_type="settlement.fee_waiver_created", actor=actor, payload={
        "waiver_id": waiver_id, "issuer_id": issuer_id, "sponsor_name": sponsor_name,
        "sponsor_account_id": account_id, "merchant_ids": sorted(merchant_ids) if merchant_ids else None,
        "programme_id": programme_id, "valid_from": valid_from.isoformat(),
        "valid_until": valid_until.isoformat() if valid_until else None,
    })
    return Waiver(waiver_id, issuer_id, sponsor_name, account_id,
                  tuple(sorted(merchant_ids)) if merchant_ids else None, programme_id, valid_from, valid_until)


async def list_waivers(conn: AsyncConnection, issuer_id: int) -> list[Waiver]:
    rows = await conn.execute(
        text(
            "SELECT id, issuer_id, sponsor_name, sponsor_account_id, merchant_ids, programme_id, valid_from, "
            "valid_until FROM fee_waivers WHERE issuer_id = :issuer ORDER BY id"
        ),
        {"issuer": issuer_id},
    )
    return [Waiver(r[0], r[1], r[2], r[3], tuple(r[4]) if r[4] else None, *r[5:]) for r in rows]


def select_waiver(waivers: list[Waiver], *, day: date, merchant_id: int, programme_id: int) -> Waiver | None:
    """The first waiver (oldest) covering the line: one sponsor pays a given fee, never two."""
    return next((w for w in waivers if w.covers(day=day, merchant_id=merchant_id, programme_id=programme_id)), None)
