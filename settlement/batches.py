"""Payout batches: prepare (draft) → approve (a second person) → export (SEPA + ledger) → paid.

What a batch settles is decided in the database, set-based: every taking not yet in a batch,
of the issuer's programmes of the batch's frequency, effective before the period's end, is
claimed by the batch (``settlement_items``, one row per taking, unique), so each taking is in
exactly one batch and a late or back-dated taking falls into the next batch prepared. The
batch's lines (merchant × programme) are aggregated by SQL; only the fee arithmetic, one
step per line, runs in Python (settlement.fees).

Money, per merchant, at export (one balanced ledger transfer):
- vouchers taken (gift, culture): units leave the merchant's account back to the programme's
  float, the same euros leave the programme's reserve into the merchant's ``payable`` account;
  local-currency payments stay with the merchant as units (converted only on request, see
  settlement.reconversion), they are listed and charged their fee rule;
- fees excl. VAT go to fee income, VAT to VAT payable; a sponsored fee is paid by the sponsor;
- euros the merchant collected at its exchange counter are netted (counter account back to 0);
- the rest leaves ``payable`` for the bank as one SEPA transfer. A negative rest is never paid:
  it stays on ``payable`` (negative) and is netted by the next batch; a returned transfer puts
  its amount back on ``payable`` for the next batch. ``payable`` is the carried balance.

Voucher units are collected per merchant account (gift and culture share the merchant's euro
account): a programme whose refunds exceeded its takings gives its units back to its own float
and reserve against the others' (see ``pooled_collects``); units the account cannot cover at
preparation (refunds written after the period's end) are carried to the next batch.
"""

from __future__ import annotations

import csv
import io
from collections import defaultdict
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from audit.chain import append, set_actor
from ledger.errors import NotFound
from ledger.transfers import Posting, transfer
from settlement.accounts import settlement_account
from settlement.errors import (
    BankDetailsInvalid,
    BatchInProgress,
    BatchNotFound,
    BatchState,
    NoFeeRule,
    NotAllowed,
    PaymentNotFound,
    PaymentState,
    PeriodNotEnded,
    SameApprover,
)
from settlement.fees import compute_fee, list_rules, list_waivers, select_rule, select_waiver
from settlement.invoices import issue_invoice
from settlement.periods import parse_period
from settlement.sepa import Credit, Debtor, checked_bic, checked_iban, credit_transfer_file

_LOCK_BATCHES = 0x53544C4D  # "STLM": one settlement operation at a time per issuer
REASON_LENGTH_MAX = 500
PREPARE_ROLES = ("operator",)
APPROVE_ROLES = ("operator", "approver")


@dataclass(frozen=True, slots=True)
class Batch:
    id: int
    issuer_id: int
    period: str
    frequency: str
    starts_at: datetime
    ends_at: datetime
    status: str
    prepared_by: int
    approved_by: int | None
    rejected_reason: str | None
    exported_at: datetime | None
    paid_at: datetime | None


@dataclass(frozen=True, slots=True)
class Line:
    merchant_id: int
    programme_id: int
    kind: str
    transactions: int
    gross_cents: int
    refunds_cents: int
    collect_cents: int
    fee_rule_id: int | None
    fee_cents: int
    vat_cents: int
    waiver_id: int | None
    sponsor_cents: int

    @property
    def merchant_fee_cents(self) -> int:
        """What the merchant bears: fee and VAT, less what a sponsor pays."""
        return self.fee_cents + self.vat_cents - self.sponsor_cents


@dataclass(frozen=True, slots=True)
class Payment:
    merchant_id: int
    creditor_name: str
    iban: str | None
    bic: str | None
    carried_in_cents: int
    counter_cents: int
    payout_cents: int
    carried_out_cents: int
    end_to_end_id: str
    status: str
    returned_reason: str | None


_BATCH_COLUMNS = ("id, issuer_id, period, frequency, starts_at, ends_at, status, prepared_by, approved_by, "
                  "rejected_reason, exported_at, paid_at")
_LINE_COLUMNS = ("merchant_id, programme_id, kind, transactions, gross_cents, refunds_cents, collect_cents, "
                 "fee_rule_id, fee_cents, vat_cents, waiver_id, sponsor_cents")
_PAYMENT_COLUMNS = ("merchant_id, creditor_name, iban, bic, carried_in_cents, counter_cents, payout_cents, "
                    "carried_out_cents, end_to_end_id, status, returned_reason")


async def lock_issuer(conn: AsyncConnection, issuer_id: int) -> None:
    await conn.execute(text("SELECT pg_advisory_xact_lock(:space, CAST(:issuer AS int))"),
                       {"space": _LOCK_BATCHES, "issuer": issuer_id})


async def _user(conn: AsyncConnection, user_id: int, roles: tuple[str, ...]) -> str:
    """The acting user's email, once its role is checked (the CLI has no HTTP guard)."""
    row = (await conn.execute(text("SELECT email, role FROM users WHERE id = :id AND disabled_at IS NULL"),
                              {"id": user_id})).one_or_none()
    if row is None or row.role not in roles:
        raise NotAllowed(user_id=user_id, allowed_roles=list(roles))
    await set_actor(conn, row.email)
    return row.email


async def get_batch(conn: AsyncConnection, batch_id: int, *, lock: bool = False) -> Batch:
    row = (await conn.execute(
        text(f"SELECT {_BATCH_COLUMNS} FROM settlement_batches WHERE id = :id" + (" FOR UPDATE" if lock else "")),
        {"id": batch_id})).one_or_none()
    if row is None:
        raise BatchNotFound(batch_id=batch_id)
    return Batch(*row)


async def list_batches(conn: AsyncConnection, issuer_id: int | None = None) -> list[Batch]:
    rows = await conn.execute(
        text(f"SELECT {_BATCH_COLUMNS} FROM settlement_batches "
             "WHERE CAST(:issuer AS bigint) IS NULL OR issuer_id = :issuer ORDER BY id"),
        {"issuer": issuer_id})
    return [Batch(*row) for row in rows]


async def batch_lines(conn: AsyncConnection, batch_id: int, merchant_id: int | None = None) -> list[Line]:
    rows = await conn.execute(
        text(f"SELECT {_LINE_COLUMNS} FROM settlement_lines WHERE batch_id = :batch "
             "AND (CAST(:merchant AS bigint) IS NULL OR merchant_id = :merchant) "
             "ORDER BY merchant_id, kind DESC, programme_id"),
        {"batch": batch_id, "merchant": merchant_id})
    return [Line(*row) for row in rows]


async def batch_payments(conn: AsyncConnection, batch_id: int, merchant_id: int | None = None) -> list[Payment]:
    rows = await conn.execute(
        text(f"SELECT {_PAYMENT_COLUMNS} FROM settlement_payments WHERE batch_id = :batch "
             "AND (CAST(:merchant AS bigint) IS NULL OR merchant_id = :merchant) ORDER BY merchant_id"),
        {"batch": batch_id, "merchant": merchant_id})
    return [Payment(*row) for row in rows]


def _moment(value: datetime | None) -> str | None:
    return value.astimezone(timezone.utc).isoformat() if value else None


def batch_totals(lines: list[Line], payments: list[Payment]) -> dict[str, int]:
    return {
        "gross_cents": sum(line.gross_cents for line in lines),
        "refunds_cents": sum(line.refunds_cents for line in lines),
        "fee_cents": sum(line.fee_cents for line in lines),
        "vat_cents": sum(line.vat_cents for line in lines),
        "sponsor_cents": sum(line.sponsor_cents for line in lines),
        "payout_cents": sum(payment.payout_cents for payment in payments),
        "transfers": sum(1 for payment in payments if payment.payout_cents > 0),
    }


# --- prepare -----------------------------------------------------------------------------------

# ORDER BY makes the claim read every candidate before it writes the first row: otherwise the
# anti-join may rescan the rows this very statement is inserting (a quadratic plan when the
# table's statistics still say it is empty); it also fills the primary key in order.
_CLAIM_TAKINGS = text(
    """
    INSERT INTO settlement_items (taking_id, batch_id)
    SELECT t.id, :batch FROM merchant_takings t JOIN programmes p ON p.id = t.programme_id
    WHERE p.issuer_id = :issuer AND p.settlement_frequency = :frequency AND t.effective_at < :ends_at
      AND NOT EXISTS (SELECT 1 FROM settlement_items i WHERE i.taking_id = t.id)
    ORDER BY t.id
    """
)
_CLAIM_RECONVERSIONS = text(
    """
    INSERT INTO settlement_reconversions (reconversion_id, batch_id)
    SELECT r.id, :batch FROM reconversions r JOIN programmes p ON p.id = r.programme_id
    WHERE p.issuer_id = :issuer AND p.settlement_frequency = :frequency AND r.requested_at < :ends_at
      AND NOT EXISTS (SELECT 1 FROM settlement_reconversions s WHERE s.reconversion_id = r.id)
    """
)
# One row per merchant × programme × kind, with what each needs: totals, what earlier batches
# left uncollected, the merchant's identity and category, the programme's kind and unit.
_AGGREGATES = text(
    """
    WITH takings AS (
        SELECT t.merchant_id, t.programme_id, 'takings' AS kind,
               count(*) FILTER (WHERE t.kind <> 'refund') AS transactions,
               coalesce(sum(t.amount_cents) FILTER (WHERE t.kind <> 'refund'), 0) AS gross_cents,
               coalesce(-sum(t.amount_cents) FILTER (WHERE t.kind = 'refund'), 0) AS refunds_cents
        FROM settlement_items i JOIN merchant_takings t ON t.id = i.taking_id
        WHERE i.batch_id = :batch GROUP BY t.merchant_id, t.programme_id
    ), converted AS (
        SELECT r.merchant_id, r.programme_id, 'reconversion' AS kind, count(*) AS transactions,
               sum(r.amount_cents) AS gross_cents, 0 AS refunds_cents
        FROM settlement_reconversions s JOIN reconversions r ON r.id = s.reconversion_id
        WHERE s.batch_id = :batch GROUP BY r.merchant_id, r.programme_id
    ), carried AS (
        SELECT l.merchant_id, l.programme_id,
               sum(l.gross_cents - l.refunds_cents - l.collect_cents) AS units_cents
        FROM settlement_lines l JOIN settlement_batches b ON b.id = l.batch_id
        WHERE b.issuer_id = :issuer AND b.id <> :batch AND l.kind = 'takings'
        GROUP BY l.merchant_id, l.programme_id HAVING sum(l.gross_cents - l.refunds_cents - l.collect_cents) <> 0
    ), later AS (
        SELECT t.merchant_id, t.programme_id, sum(t.amount_cents) AS units_cents
        FROM merchant_takings t JOIN programmes p ON p.id = t.programme_id
        WHERE p.issuer_id = :issuer AND t.effective_at >= :ends_at
          AND NOT EXISTS (SELECT 1 FROM settlement_items i WHERE i.taking_id = t.id)
        GROUP BY t.merchant_id, t.programme_id
    ), wanted AS (
        SELECT * FROM takings UNION ALL SELECT * FROM converted
        UNION ALL
        SELECT c.merchant_id, c.programme_id, 'takings', 0, 0, 0 FROM carried c
        WHERE NOT EXISTS (SELECT 1 FROM takings t WHERE t.merchant_id = c.merchant_id
                                                     AND t.programme_id = c.programme_id)
    )
    SELECT w.merchant_id, w.programme_id, w.kind, w.transactions, w.gross_cents, w.refunds_cents,
           coalesce(c.units_cents, 0) AS carried_units_cents, coalesce(l.units_cents, 0) AS later_units_cents,
           m.category, p.kind AS programme_kind, p.unit
    FROM wanted w JOIN merchants m ON m.id = w.merchant_id JOIN programmes p ON p.id = w.programme_id
    LEFT JOIN carried c ON w.kind = 'takings' AND c.merchant_id = w.merchant_id AND c.programme_id = w.programme_id
    LEFT JOIN later l ON w.kind = 'takings' AND l.merchant_id = w.merchant_id AND l.programme_id = w.programme_id
    ORDER BY w.merchant_id, w.kind DESC, w.programme_id
    """
)
# Merchants with something to settle: lines, a carried balance, or euros owed for counter sales.
_MERCHANTS = text(
    """
    WITH concerned AS (
        SELECT DISTINCT merchant_id FROM settlement_lines WHERE batch_id = :batch
        UNION
        SELECT s.owner_id FROM settlement_accounts s JOIN accounts a ON a.id = s.account_id
        JOIN merchants m ON m.id = s.owner_id
        WHERE s.owner_type = 'merchant' AND s.purpose = 'payable' AND a.balance_cents <> 0
          AND m.issuer_id = :issuer
        UNION
        SELECT m.id FROM merchants m JOIN accounts a
          ON a.owner_type = 'merchant' AND a.owner_id = m.id::text AND a.kind = 'counter'
        WHERE m.issuer_id = :issuer AND a.balance_cents <> 0
    )
    SELECT m.id, m.legal_name, m.iban, m.bic,
           coalesce((SELECT a.balance_cents FROM settlement_accounts s JOIN accounts a ON a.id = s.account_id
                     WHERE s.owner_type = 'merchant' AND s.owner_id = m.id AND s.purpose = 'payable'
                       AND s.unit = 'EUR'), 0) AS carried_in_cents,
           coalesce((SELECT -sum(a.balance_cents) FROM accounts a
                     WHERE a.owner_type = 'merchant' AND a.owner_id = m.id::text AND a.kind = 'counter'
                       AND a.unit = 'EUR'), 0) AS counter_owed_cents
    FROM concerned c JOIN merchants m ON m.id = c.merchant_id ORDER BY m.id
    """
)
_MERCHANT_BALANCES = text(
    """
    SELECT a.owner_id::bigint AS merchant_id, a.unit, a.balance_cents FROM accounts a
    WHERE a.kind = 'merchant' AND a.owner_type = 'merchant'
      AND a.owner_id IN (SELECT id::text FROM merchants WHERE issuer_id = :issuer)
    """
)


async def prepare(conn: AsyncConnection, *, issuer_id: int, period: str, user_id: int,
                  now: datetime | None = None) -> Batch:
    """The period's batch: created as a draft, or recomputed if it is still a draft, or returned
    unchanged once approved. Never a second batch for the same period."""
    wanted = parse_period(period)
    if wanted.ends_at > (now or datetime.now(timezone.utc)):
        raise PeriodNotEnded(period=wanted.label, ends_at=wanted.ends_at.isoformat())
    actor = await _user(conn, user_id, PREPARE_ROLES)
    if not await conn.scalar(text("SELECT EXISTS (SELECT 1 FROM issuers WHERE id = :id)"), {"id": issuer_id}):
        raise NotFound("no issuer has this id", message_fr="Aucun émetteur ne porte ce numéro.", issuer_id=issuer_id)
    await lock_issuer(conn, issuer_id)
    existing = await conn.scalar(
        text("SELECT id FROM settlement_batches WHERE issuer_id = :issuer AND period = :period"),
        {"issuer": issuer_id, "period": wanted.label})
    if existing is not None:
        batch = await get_batch(conn, existing, lock=True)
        if batch.status != "draft":
            return batch
        for table in ("settlement_lines", "settlement_payments", "settlement_items", "settlement_reconversions"):
            await conn.execute(text(f"DELETE FROM {table} WHERE batch_id = :batch"), {"batch": batch.id})
        await conn.execute(text("UPDATE settlement_batches SET prepared_by = :user, prepared_at = now() "
                                "WHERE id = :batch"), {"user": user_id, "batch": batch.id})
        batch_id = batch.id
    else:
        open_batch = await conn.scalar(text("SELECT id FROM settlement_batches WHERE issuer_id = :issuer "
                                            "AND status IN ('draft', 'approved')"), {"issuer": issuer_id})
        if open_batch is not None:
            raise BatchInProgress(batch_id=open_batch)
        batch_id = await conn.scalar(
            text("INSERT INTO settlement_batches (issuer_id, period, frequency, starts_at, ends_at, prepared_by) "
                 "VALUES (:issuer, :period, :frequency, :starts_at, :ends_at, :user) RETURNING id"),
            {"issuer": issuer_id, "period": wanted.label, "frequency": wanted.frequency,
             "starts_at": wanted.starts_at, "ends_at": wanted.ends_at, "user": user_id})

    claim = {"batch": batch_id, "issuer": issuer_id, "frequency": wanted.frequency, "ends_at": wanted.ends_at}
    await conn.execute(_CLAIM_TAKINGS, claim)
    await conn.execute(_CLAIM_RECONVERSIONS, claim)
    await _compute_lines(conn, batch_id=batch_id, issuer_id=issuer_id, first_day=wanted.first_day,
                         ends_at=wanted.ends_at)
    await _compute_payments(conn, batch_id=batch_id, issuer_id=issuer_id)

    batch = await get_batch(conn, batch_id)
    totals = batch_totals(await batch_lines(conn, batch_id), await batch_payments(conn, batch_id))
    items = await conn.scalar(text("SELECT count(*) FROM settlement_items WHERE batch_id = :b"), {"b": batch_id})
    await append(conn, event_type="settlement.batch_prepared", actor=actor, payload={
        "batch_id": batch_id, "issuer_id": issuer_id, "period": wanted.label, "takings": items, **totals})
    return batch


async def _compute_lines(conn: AsyncConnection, *, batch_id: int, issuer_id: int, first_day: date,
                         ends_at: datetime) -> None:
    rules = await list_rules(conn, issuer_id)
    waivers = await list_waivers(conn, issuer_id)
    rows = (await conn.execute(_AGGREGATES, {"batch": batch_id, "issuer": issuer_id, "ends_at": ends_at})).all()
    # What each merchant account can give up now; gift and culture share the merchant's EUR account.
    available = {(r.merchant_id, r.unit): r.balance_cents
                 for r in await conn.execute(_MERCHANT_BALANCES, {"issuer": issuer_id})}
    collects = _collects(rows, available)
    columns: dict[str, list] = defaultdict(list)
    for row in rows:
        rule = select_rule(rules, kind=row.kind, day=first_day, programme_id=row.programme_id,
                           category=row.category, merchant_id=row.merchant_id)
        if rule is None and row.transactions > 0:
            raise NoFeeRule(merchant_id=row.merchant_id, programme_id=row.programme_id, kind=row.kind)
        basis = row.gross_cents - row.refunds_cents
        fee = compute_fee(rule, basis_cents=basis, transactions=row.transactions) if rule else None
        fee_cents, vat_cents = (fee.fee_cents, fee.vat_cents) if fee else (0, 0)
        waiver = select_waiver(waivers, day=first_day, merchant_id=row.merchant_id, programme_id=row.programme_id)
        sponsor_cents = fee_cents + vat_cents if waiver else 0
        collect = collects[(row.merchant_id, row.programme_id, row.kind)]
        for name, value in (("merchant_id", row.merchant_id), ("programme_id", row.programme_id),
                            ("kind", row.kind), ("transactions", row.transactions),
                            ("gross_cents", row.gross_cents), ("refunds_cents", row.refunds_cents),
                            ("collect_cents", collect), ("fee_rule_id", rule.id if rule else None),
                            ("fee_cents", fee_cents), ("vat_cents", vat_cents),
                            ("waiver_id", waiver.id if waiver and sponsor_cents else None),
                            ("sponsor_cents", sponsor_cents)):
            columns[name].append(value)
    if not rows:
        return
    await conn.execute(
        text(
            f"""
            INSERT INTO settlement_lines (batch_id, {_LINE_COLUMNS})
            SELECT :batch, * FROM unnest(
                CAST(:merchant_id AS bigint[]), CAST(:programme_id AS bigint[]), CAST(:kind AS text[]),
                CAST(:transactions AS int[]), CAST(:gross_cents AS bigint[]), CAST(:refunds_cents AS bigint[]),
                CAST(:collect_cents AS bigint[]), CAST(:fee_rule_id AS bigint[]), CAST(:fee_cents AS bigint[]),
                CAST(:vat_cents AS bigint[]), CAST(:waiver_id AS bigint[]), CAST(:sponsor_cents AS bigint[]))
            """
        ),
        {"batch": batch_id, **columns},
    )


def _collects(rows, available: dict[tuple[int, str], int]) -> dict[tuple[int, int, str], int]:
    """Units each line takes out of circulation: {(merchant, programme, kind): cents}.

    A reconversion takes the units set aside; local-currency payments take none (they stay with
    the merchant). Voucher programmes of one unit share the merchant's account, so they are
    settled together, per account: see :func:`pooled_collects`."""
    collects: dict[tuple[int, int, str], int] = {}
    pools: dict[tuple[int, str], list[tuple[int, int]]] = defaultdict(list)
    for row in rows:
        key = (row.merchant_id, row.programme_id, row.kind)
        if row.kind == "reconversion":
            collects[key] = row.gross_cents
        elif row.programme_kind == "local_currency":
            collects[key] = 0
        else:
            due = row.gross_cents - row.refunds_cents + row.carried_units_cents
            # Refunds written after the period's end already left the account: not collectable now.
            pools[(row.merchant_id, row.unit)].append((row.programme_id, due + min(row.later_units_cents, 0)))
    for (merchant_id, unit), caps in pools.items():
        for programme_id, collect in pooled_collects(caps, available.get((merchant_id, unit), 0)).items():
            collects[(merchant_id, programme_id, "takings")] = collect
    return collects


def pooled_collects(caps: list[tuple[int, int]], available_cents: int) -> dict[int, int]:
    """Split what is collected from one merchant account among its programmes.

    ``caps``: (programme, the most that programme's units may be collected: negative when its
    refunds exceeded its takings, the units having come from another programme's takings).
    The account gives up ``clamp(sum of caps, 0, available)``. A negative line is collected
    negatively (its programme's float and reserve take the units back) against the positive
    lines, so each programme's reserve keeps backing its own units in circulation; what cannot
    be collected now is carried (never a negative total: the merchant account is not credited).
    """
    positive = sum(cap for _, cap in caps if cap > 0)
    negative = -sum(cap for _, cap in caps if cap < 0)
    total = max(0, min(positive - negative, available_cents))
    give, take = total + min(negative, positive), min(negative, positive)  # positives give, negatives take
    collects = {}
    for programme_id, cap in caps:
        if cap > 0:
            collects[programme_id] = min(cap, give)
            give -= collects[programme_id]
        elif cap < 0:
            collects[programme_id] = -min(-cap, take)
            take += collects[programme_id]
        else:
            collects[programme_id] = 0
    assert sum(collects.values()) == total
    return collects


async def _compute_payments(conn: AsyncConnection, *, batch_id: int, issuer_id: int) -> None:
    due = {
        row.merchant_id: row.due_cents
        for row in await conn.execute(
            text("SELECT merchant_id, sum(collect_cents - fee_cents - vat_cents + sponsor_cents) AS due_cents "
                 "FROM settlement_lines WHERE batch_id = :batch GROUP BY merchant_id"), {"batch": batch_id})
    }
    columns: dict[str, list] = defaultdict(list)
    bad: list[int] = []
    for row in await conn.execute(_MERCHANTS, {"batch": batch_id, "issuer": issuer_id}):
        counter = max(0, int(row.counter_owed_cents))
        net = int(row.carried_in_cents) + int(due.get(row.id, 0)) - counter
        payout = max(net, 0)
        if payout > 0:
            try:
                checked_iban(row.iban, subject=row.legal_name)
                checked_bic(row.bic, subject=row.legal_name)
            except BankDetailsInvalid:
                bad.append(row.id)
        for name, value in (("merchant_id", row.id), ("creditor_name", row.legal_name), ("iban", row.iban),
                            ("bic", row.bic), ("carried_in_cents", int(row.carried_in_cents)),
                            ("counter_cents", counter), ("payout_cents", payout),
                            ("carried_out_cents", min(net, 0)),
                            ("end_to_end_id", f"CIRCUIT-{batch_id}-{row.id}"),
                            ("status", "pending" if payout > 0 else "none")):
            columns[name].append(value)
    if any(columns.get("payout_cents", ())):
        # The issuer's own account is the debtor of every transfer: checked now, not at export.
        debtor = (await conn.execute(text("SELECT debtor_iban, debtor_bic FROM issuers WHERE id = :id"),
                                     {"id": issuer_id})).one()
        checked_iban(debtor.debtor_iban, subject="issuer")
        checked_bic(debtor.debtor_bic, subject="issuer")
    if bad:
        raise BankDetailsInvalid("a merchant to be paid has no valid IBAN or BIC: fix its details and prepare "
                                 "the period again", message_fr="Un commerçant à payer n'a pas d'IBAN ou de BIC "
                                 "valide : corrigez ses coordonnées et préparez de nouveau la période.",
                                 merchant_ids=bad)
    if not columns:
        return
    await conn.execute(
        text(
            """
            INSERT INTO settlement_payments (batch_id, merchant_id, creditor_name, iban, bic, carried_in_cents,
                counter_cents, payout_cents, carried_out_cents, end_to_end_id, status)
            SELECT :batch, * FROM unnest(
                CAST(:merchant_id AS bigint[]), CAST(:creditor_name AS text[]), CAST(:iban AS text[]),
                CAST(:bic AS text[]), CAST(:carried_in_cents AS bigint[]), CAST(:counter_cents AS bigint[]),
                CAST(:payout_cents AS bigint[]), CAST(:carried_out_cents AS bigint[]),
                CAST(:end_to_end_id AS text[]), CAST(:status AS text[]))
            """
        ),
        {"batch": batch_id, **columns},
    )


# --- approval -----------------------------------------------------------------------------------

async def approve(conn: AsyncConnection, *, batch_id: int, user_id: int) -> Batch:
    actor = await _user(conn, user_id, APPROVE_ROLES)
    batch = await get_batch(conn, batch_id, lock=True)
    if batch.status != "draft":
        raise BatchState(batch_id=batch_id, status=batch.status, wanted="approved")
    if batch.prepared_by == user_id:
        raise SameApprover(batch_id=batch_id)
    await conn.execute(text("UPDATE settlement_batches SET status = 'approved', approved_by = :user, "
                            "approved_at = now() WHERE id = :batch"), {"user": user_id, "batch": batch_id})
    await append(conn, event_type="settlement.batch_approved", actor=actor,
                 payload={"batch_id": batch_id, "approved_by": user_id, "prepared_by": batch.prepared_by})
    return await get_batch(conn, batch_id)


async def reject(conn: AsyncConnection, *, batch_id: int, user_id: int, reason: str) -> Batch:
    actor = await _user(conn, user_id, APPROVE_ROLES)
    reason = (reason or "").strip()
    if not 1 <= len(reason) <= REASON_LENGTH_MAX:
        raise BatchState(f"a rejection gives a reason of 1 to {REASON_LENGTH_MAX} characters",
                         message_fr=f"Un rejet donne un motif de 1 à {REASON_LENGTH_MAX} caractères.")
    batch = await get_batch(conn, batch_id, lock=True)
    if batch.status not in ("draft", "approved"):
        raise BatchState(batch_id=batch_id, status=batch.status, wanted="draft")
    await conn.execute(text("UPDATE settlement_batches SET status = 'draft', approved_by = NULL, approved_at = NULL, "
                            "rejected_reason = :reason WHERE id = :batch"), {"reason": reason, "batch": batch_id})
    await append(conn, event_type="settlement.batch_rejected", actor=actor,
                 payload={"batch_id": batch_id, "previous_status": batch.status, "reason": reason})
    return await get_batch(conn, batch_id)


# --- export ---------------------------------------------------------------------------------------

def _execution_date(moment: datetime) -> date:
    """The next business day: banks refuse a requested date in the past or on a weekend."""
    day = moment.date() + timedelta(days=1)
    while day.weekday() >= 5:
        day += timedelta(days=1)
    return day


async def export(conn: AsyncConnection, *, batch_id: int, user_id: int,
                 now: datetime | None = None) -> dict[str, bytes]:
    """Move the money in the ledger, number the fee invoices, write the SEPA file and the CSV.
    Exporting again returns the same files and moves nothing."""
    actor = await _user(conn, user_id, APPROVE_ROLES)
    batch = await get_batch(conn, batch_id)
    await lock_issuer(conn, batch.issuer_id)
    batch = await get_batch(conn, batch_id, lock=True)
    if batch.status in ("exported", "paid"):
        return await batch_files(conn, batch_id)
    if batch.status != "approved":
        raise BatchState(batch_id=batch_id, status=batch.status, wanted="exported")
    now = now or datetime.now(timezone.utc)
    issuer = (await conn.execute(text("SELECT name, debtor_iban, debtor_bic FROM issuers WHERE id = :id"),
                                 {"id": batch.issuer_id})).one()
    debtor = Debtor(issuer.name, checked_iban(issuer.debtor_iban, subject="issuer"), issuer.debtor_bic)
    lines = await batch_lines(conn, batch_id)
    payments = await batch_payments(conn, batch_id)
    programmes = {row.id: row for row in await conn.execute(
        text("SELECT id, unit, float_account_id, reserve_account_id FROM programmes WHERE issuer_id = :issuer"),
        {"issuer": batch.issuer_id})}
    sponsors = {row.id: row.sponsor_account_id for row in await conn.execute(
        text("SELECT id, sponsor_account_id FROM fee_waivers WHERE issuer_id = :issuer"), {"issuer": batch.issuer_id})}
    fee_income = await settlement_account(conn, owner_type="issuer", owner_id=batch.issuer_id, purpose="fee_income")
    vat_payable = await settlement_account(conn, owner_type="issuer", owner_id=batch.issuer_id, purpose="vat_payable")
    bank = await settlement_account(conn, owner_type="issuer", owner_id=batch.issuer_id, purpose="bank")
    merchant_accounts = {(row.owner_id, row.unit): row.id for row in await conn.execute(
        text("SELECT id, owner_id::bigint AS owner_id, unit FROM accounts WHERE kind = 'merchant' "
             "AND owner_type = 'merchant' AND owner_id IN (SELECT merchant_id::text FROM settlement_lines "
             "WHERE batch_id = :batch)"), {"batch": batch_id})}
    counters = {row.owner_id: row.id for row in await conn.execute(
        text("SELECT DISTINCT ON (owner_id) id, owner_id::bigint AS owner_id FROM accounts WHERE kind = 'counter' "
             "AND owner_type = 'merchant' AND unit = 'EUR' AND owner_id IN (SELECT merchant_id::text "
             "FROM settlement_payments WHERE batch_id = :batch) ORDER BY owner_id, id"), {"batch": batch_id})}

    lines_of: dict[int, list[Line]] = defaultdict(list)
    for line in lines:
        lines_of[line.merchant_id].append(line)
    for payment in payments:
        merchant_id = payment.merchant_id
        payable = await settlement_account(conn, owner_type="merchant", owner_id=merchant_id, purpose="payable")
        moves: dict[int, int] = defaultdict(int)
        for line in lines_of[merchant_id]:
            programme = programmes[line.programme_id]
            if line.collect_cents:
                source = (await settlement_account(conn, owner_type="merchant", owner_id=merchant_id,
                                                   purpose="reconversion", unit=programme.unit)
                          if line.kind == "reconversion" else merchant_accounts[(merchant_id, programme.unit)])
                moves[source] -= line.collect_cents
                moves[programme.float_account_id] += line.collect_cents
                moves[programme.reserve_account_id] -= line.collect_cents
                moves[payable] += line.collect_cents
            moves[fee_income] += line.fee_cents
            moves[vat_payable] += line.vat_cents
            moves[payable] -= line.merchant_fee_cents
            if line.sponsor_cents:
                moves[sponsors[line.waiver_id]] -= line.sponsor_cents
        if payment.counter_cents:
            moves[counters[merchant_id]] += payment.counter_cents
            moves[payable] -= payment.counter_cents
        if payment.payout_cents:
            moves[payable] -= payment.payout_cents
            moves[bank] += payment.payout_cents
        postings = [Posting(account, amount) for account, amount in sorted(moves.items()) if amount]
        if len(postings) >= 2:
            await transfer(conn, key=f"settlement:{batch_id}:{merchant_id}", kind="settlement.payout",
                           postings=postings, metadata={"batch_id": batch_id, "merchant_id": merchant_id,
                                                        "period": batch.period})
        fee = sum(line.fee_cents for line in lines_of[merchant_id])
        if fee:
            await issue_invoice(
                conn, issuer_id=batch.issuer_id, merchant_id=merchant_id, batch_id=batch_id,
                issued_on=now.date(), fee_cents=fee, vat_cents=sum(line.vat_cents for line in lines_of[merchant_id]),
                sponsor_cents=sum(line.sponsor_cents for line in lines_of[merchant_id]), actor=actor,
                lines=[{"programme_id": line.programme_id, "kind": line.kind, "basis_cents": line.gross_cents
                        - line.refunds_cents, "fee_cents": line.fee_cents, "vat_cents": line.vat_cents,
                        "sponsor_cents": line.sponsor_cents, "fee_rule_id": line.fee_rule_id}
                       for line in lines_of[merchant_id] if line.fee_cents],
            )

    credits = [Credit(p.creditor_name, p.iban, p.bic, p.payout_cents, p.end_to_end_id,
                      f"Circuit reversement {batch.period} lot {batch_id} {p.creditor_name}")
               for p in payments if p.payout_cents > 0]
    files = {"csv": payments_csv(batch, payments)}
    if credits:  # a batch that pays nobody (all carried) has no SEPA file
        files["pain.001"] = credit_transfer_file(
            message_id=f"CIRCUIT-{batch.issuer_id}-{batch.period}-{batch_id}", debtor=debtor, credits=credits,
            execution_date=_execution_date(now), created_at=now)
    for kind, content in files.items():
        await conn.execute(text("INSERT INTO settlement_files (batch_id, kind, content) VALUES (:b, :k, :c)"),
                           {"b": batch_id, "k": kind, "c": content})
    await conn.execute(text("UPDATE settlement_payments SET status = 'sent' WHERE batch_id = :b AND payout_cents > 0"),
                       {"b": batch_id})
    await conn.execute(text("UPDATE settlement_batches SET status = 'exported', exported_at = :now WHERE id = :b"),
                       {"now": now, "b": batch_id})
    await append(conn, event_type="settlement.batch_exported", actor=actor, payload={
        "batch_id": batch_id, "period": batch.period, **batch_totals(lines, payments)})
    return files


def payments_csv(batch: Batch, payments: list[Payment]) -> bytes:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["batch_id", "period", "merchant_id", "creditor_name", "iban", "bic", "carried_in_cents",
                     "counter_cents", "payout_cents", "carried_out_cents", "end_to_end_id"])
    for p in payments:
        writer.writerow([batch.id, batch.period, p.merchant_id, p.creditor_name, p.iban or "", p.bic or "",
                         p.carried_in_cents, p.counter_cents, p.payout_cents, p.carried_out_cents, p.end_to_end_id])
    return out.getvalue().encode()


async def batch_files(conn: AsyncConnection, batch_id: int) -> dict[str, bytes]:
    rows = await conn.execute(text("SELECT kind, content FROM settlement_files WHERE batch_id = :b"), {"b": batch_id})
    return {row.kind: bytes(row.content) for row in rows}


# --- bank confirmation ------------------------------------------------------------------------------

async def mark_paid(conn: AsyncConnection, *, batch_id: int, user_id: int) -> Batch:
    actor = await _user(conn, user_id, APPROVE_ROLES)
    batch = await get_batch(conn, batch_id, lock=True)
    if batch.status != "exported":
        raise BatchState(batch_id=batch_id, status=batch.status, wanted="paid")
    await conn.execute(text("UPDATE settlement_payments SET status = 'paid' WHERE batch_id = :b AND status = 'sent'"),
                       {"b": batch_id})
    await conn.execute(text("UPDATE settlement_batches SET status = 'paid', paid_at = now() WHERE id = :b"),
                       {"b": batch_id})
    await append(conn, event_type="settlement.batch_paid", actor=actor, payload={"batch_id": batch_id})
    return await get_batch(conn, batch_id)


async def mark_returned(conn: AsyncConnection, *, batch_id: int, merchant_id: int, user_id: int,
                        reason: str) -> Payment:
    """The bank sent a transfer back (wrong IBAN…): its euros return to the merchant's payable
    balance, to be paid by the next batch."""
    actor = await _user(conn, user_id, APPROVE_ROLES)
    reason = (reason or "").strip()[:REASON_LENGTH_MAX] or "returned by the bank"
    batch = await get_batch(conn, batch_id)
    await lock_issuer(conn, batch.issuer_id)
    row = (await conn.execute(text("SELECT status, payout_cents FROM settlement_payments "
                                   "WHERE batch_id = :b AND merchant_id = :m FOR UPDATE"),
                              {"b": batch_id, "m": merchant_id})).one_or_none()
    if row is None:
        raise PaymentNotFound(batch_id=batch_id, merchant_id=merchant_id)
    if row.status not in ("sent", "paid"):
        raise PaymentState(batch_id=batch_id, merchant_id=merchant_id, status=row.status)
    payable = await settlement_account(conn, owner_type="merchant", owner_id=merchant_id, purpose="payable")
    bank = await settlement_account(conn, owner_type="issuer", owner_id=batch.issuer_id, purpose="bank")
    result = await transfer(conn, key=f"settlement-return:{batch_id}:{merchant_id}", kind="settlement.return",
                            postings=[Posting(bank, -row.payout_cents), Posting(payable, row.payout_cents)],
                            metadata={"batch_id": batch_id, "merchant_id": merchant_id, "reason": reason})
    await conn.execute(text("UPDATE settlement_payments SET status = 'returned', returned_reason = :r "
                            "WHERE batch_id = :b AND merchant_id = :m"), {"r": reason, "b": batch_id, "m": merchant_id})
    await append(conn, event_type="settlement.payment_returned", actor=actor, payload={
        "batch_id": batch_id, "merchant_id": merchant_id, "amount_cents": row.payout_cents, "reason": reason,
        "transfer_id": result.transfer_id})
    return (await batch_payments(conn, batch_id, merchant_id))[0]
