"""Balances now and as they stood at a past time."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from ledger.accounts import get_account


@dataclass(frozen=True, slots=True)
class Balance:
    account_id: int
    unit: str
    balance_cents: int
    available_cents: int
    pending_debits_cents: int
    pending_credits_cents: int
    as_of: datetime | None  # None: now


async def balance(conn: AsyncConnection, account_id: int, *, as_of: datetime | None = None) -> Balance:
    """Current balance; with ``as_of``, the posted balance from postings effective by then."""
    account = await get_account(conn, account_id)
    if as_of is None:
        return Balance(
            account_id=account.id, unit=account.unit, balance_cents=account.balance_cents,
            available_cents=account.available_cents,
            pending_debits_cents=account.pending_debits_cents,
            pending_credits_cents=account.pending_credits_cents, as_of=None,
        )
    posted = (
        await conn.execute(
            text(
                """
                SELECT coalesce(sum(p.amount_cents), 0) FROM postings p
                JOIN transfers t ON t.id = p.transfer_id
                WHERE p.account_id = :id AND t.effective_at <= :as_of
                  AND t.phase IN ('posted', 'post_pending')
                """
            ),
            {"id": account_id, "as_of": as_of},
        )
    ).scalar_one()
    return Balance(
        account_id=account.id, unit=account.unit, balance_cents=int(posted),
        available_cents=int(posted), pending_debits_cents=0, pending_credits_cents=0, as_of=as_of,
    )
