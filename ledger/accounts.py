"""Accounts: every kind of holding (floats, reserves, wallets, vouchers, merchants, fees…).

An account's unit and kind never change. Its balance columns are written only by the
ledger's SQL functions; this module opens accounts and reads them.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from ledger.errors import AccountNotFound, InvalidInput

OWNER_LENGTH_MAX = 80
_DEFAULT_FLOOR = object()


class AccountKind(StrEnum):
    ISSUER_FLOAT = "issuer_float"
    RESERVE = "reserve"
    WALLET = "wallet"
    VOUCHER = "voucher"
    MERCHANT = "merchant"
    FEE_INCOME = "fee_income"
    VAT_PAYABLE = "vat_payable"
    CLEARING = "clearing"
    BREAKAGE = "breakage"
    EXTERNAL_BANK = "external_bank"
    SPONSOR = "sponsor"
    COUNTER = "counter"


@dataclass(frozen=True, slots=True)
class Account:
    id: int
    kind: str
    unit: str
    owner_type: str | None
    owner_id: str | None
    floor_cents: int | None
    balance_cents: int
    pending_debits_cents: int
    pending_credits_cents: int
    created_at: datetime

    @property
    def available_cents(self) -> int:
        return self.balance_cents - self.pending_debits_cents


_COLUMNS = (
    "id, kind, unit, owner_type, owner_id, floor_cents, balance_cents, "
    "pending_debits_cents, pending_credits_cents, created_at"
)


async def open_account(
    conn: AsyncConnection,
    *,
    kind: str,
    unit: str,
    owner_type: str | None = None,
    owner_id: str | int | None = None,
    floor_cents: int | None | object = _DEFAULT_FLOOR,
) -> int:
    """Open an account; its floor is the kind's default unless one is given (None: no floor)."""
    owner = None if owner_id is None else str(owner_id)
    if owner is not None and len(owner) > OWNER_LENGTH_MAX:
        raise InvalidInput(f"owner_id is longer than {OWNER_LENGTH_MAX} characters")
    row = await conn.execute(
        text(
            """
            INSERT INTO accounts (kind, unit, owner_type, owner_id, floor_cents)
            SELECT k.kind, u.code, :owner_type, :owner_id,
                   CASE WHEN :use_default THEN k.default_floor_cents ELSE :floor END
            FROM account_kinds k, units u WHERE k.kind = :kind AND u.code = :unit
            RETURNING id
            """
        ),
        {
            "kind": str(kind),
            "unit": unit,
            "owner_type": owner_type,
            "owner_id": owner,
            "use_default": floor_cents is _DEFAULT_FLOOR,
            "floor": None if floor_cents is _DEFAULT_FLOOR else floor_cents,
        },
    )
    account_id = row.scalar()
    if account_id is None:
        raise InvalidInput("unknown account kind or unit", kind=str(kind), unit=unit)
    return account_id


async def get_account(conn: AsyncConnection, account_id: int) -> Account:
    row = (
        await conn.execute(text(f"SELECT {_COLUMNS} FROM accounts WHERE id = :id"), {"id": account_id})
    ).one_or_none()
    if row is None:
        raise AccountNotFound(account_ids=[account_id])
    return Account(*row)


async def ensure_unit(conn: AsyncConnection, code: str, name: str) -> None:
    await conn.execute(
        text("INSERT INTO units (code, name) VALUES (:code, :name) ON CONFLICT (code) DO NOTHING"),
        {"code": code, "name": name},
    )
