"""Reconversion: a merchant turns local-currency units back into euros, for a fee.

Only professionals may do this (CMF L311-5/6), so only a merchant's own account is debited.
On request the units move from the merchant's account to its ``reconversion`` account (they
can no longer be spent, and the ledger's floor refuses a request beyond the balance); the next
batch of the programme's frequency converts them: the units return to the float (they leave
circulation), as many euros leave the reserve, the reconversion fee rule (kind
``reconversion``, e.g. 2% or 5%) is charged, and the rest is paid in the merchant's transfer.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from audit.chain import append
from ledger.transfers import AMOUNT_CENTS_MAX, Posting, transfer
from settlement.accounts import settlement_account
from settlement.batches import lock_issuer
from settlement.errors import NoFeeRule, ReconversionRefused
from settlement.fees import list_rules, select_rule
from settlement.periods import PARIS


@dataclass(frozen=True, slots=True)
class Reconversion:
    id: int
    merchant_id: int
    programme_id: int
    amount_cents: int
    transfer_id: int
    requested_at: datetime
    batch_id: int | None


_COLUMNS = ("r.id, r.merchant_id, r.programme_id, r.amount_cents, r.transfer_id, r.requested_at, s.batch_id")


async def request_reconversion(conn: AsyncConnection, *, merchant_id: int, amount_cents: int, key: str,
                               actor: str, programme_id: int | None = None) -> Reconversion:
    """Set ``amount_cents`` units aside for conversion; retrying with the same key returns the first request."""
    if type(amount_cents) is not int or not 0 < amount_cents <= AMOUNT_CENTS_MAX:
        raise ReconversionRefused("the amount is a positive whole number of cents",
                                  message_fr="Le montant est un nombre entier positif de centimes.",
                                  amount_cents=amount_cents)
    programme = (await conn.execute(text(
        """
        SELECT p.id, p.issuer_id, p.unit, a.id AS account_id, m.category FROM merchants m
        JOIN programmes p ON p.issuer_id = m.issuer_id AND p.kind = 'local_currency'
        JOIN accounts a ON a.kind = 'merchant' AND a.owner_type = 'merchant' AND a.owner_id = m.id::text
                       AND a.unit = p.unit
        WHERE m.id = :merchant AND m.status = 'approved' AND (CAST(:programme AS bigint) IS NULL OR p.id = :programme)
        ORDER BY p.id LIMIT 1
        """), {"merchant": merchant_id, "programme": programme_id})).one_or_none()
    if programme is None:
        raise ReconversionRefused(merchant_id=merchant_id, programme_id=programme_id)
    today = datetime.now(timezone.utc).astimezone(PARIS).date()
    if select_rule(await list_rules(conn, programme.issuer_id), kind="reconversion", day=today,
                   programme_id=programme.id, category=programme.category, merchant_id=merchant_id) is None:
        raise NoFeeRule(merchant_id=merchant_id, programme_id=programme.id, kind="reconversion")
    await lock_issuer(conn, programme.issuer_id)
    set_aside = await settlement_account(conn, owner_type="merchant", owner_id=merchant_id, purpose="reconversion",
                                         unit=programme.unit)
    moved = await transfer(conn, key=f"reconversion:{merchant_id}:{key}", kind="settlement.reconversion",
                           postings=[Posting(programme.account_id, -amount_cents), Posting(set_aside, amount_cents)],
                           metadata={"merchant_id": merchant_id, "programme_id": programme.id})
    if moved.created:
        await conn.execute(text(
            "INSERT INTO reconversions (merchant_id, programme_id, amount_cents, transfer_id, requested_by) "
            "VALUES (:m, :p, :a, :t, :actor)"),
            {"m": merchant_id, "p": programme.id, "a": amount_cents, "t": moved.transfer_id, "actor": actor})
    found = (await conn.execute(text(
        f"SELECT {_COLUMNS} FROM reconversions r LEFT JOIN settlement_reconversions s ON s.reconversion_id = r.id "
        "WHERE r.transfer_id = :t"), {"t": moved.transfer_id})).one()
    reconversion = Reconversion(*found)
    if moved.created:
        await append(conn, event_type="settlement.reconversion_requested", actor=actor, payload={
            "reconversion_id": reconversion.id, "merchant_id": merchant_id, "programme_id": programme.id,
            "amount_cents": amount_cents, "transfer_id": moved.transfer_id})
    return reconversion


async def list_reconversions(conn: AsyncConnection, merchant_id: int) -> list[Reconversion]:
    rows = await conn.execute(text(
        f"SELECT {_COLUMNS} FROM reconversions r LEFT JOIN settlement_reconversions s ON s.reconversion_id = r.id "
        "WHERE r.merchant_id = :m ORDER BY r.id"), {"m": merchant_id})
    return [Reconversion(*row) for row in rows]
