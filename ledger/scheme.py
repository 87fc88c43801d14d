"""The scheme's cast, at its simplest: issuers, their programmes, merchants and wallets.

Opening a programme opens its three ledger accounts: the float (units or vouchers in
circulation, negative by what is outstanding), the euro reserve that backs them one to one,
and the external bank account that stands for the outside world's euros.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from ledger.accounts import AccountKind, open_account
from ledger.errors import NotFound
from ledger.transfers import Posting, TransferResult, transfer

RESERVE_UNIT = "EUR"


@dataclass(frozen=True, slots=True)
class Programme:
    id: int
    issuer_id: int
    kind: str
    name: str
    unit: str
    float_account_id: int
    reserve_account_id: int
    bank_account_id: int


async def create_issuer(conn: AsyncConnection, *, name: str, siren: str | None = None) -> int:
    return (
        await conn.execute(
            text("INSERT INTO issuers (name, siren) VALUES (:name, :siren) RETURNING id"),
            {"name": name, "siren": siren},
        )
    ).scalar_one()


async def create_programme(
    conn: AsyncConnection, *, issuer_id: int, kind: str, name: str, unit: str
) -> Programme:
    float_id = await open_account(conn, kind=AccountKind.ISSUER_FLOAT, unit=unit, owner_type="issuer", owner_id=issuer_id)
    reserve_id = await open_account(conn, kind=AccountKind.RESERVE, unit=RESERVE_UNIT, owner_type="issuer", owner_id=issuer_id)
    bank_id = await open_account(conn, kind=AccountKind.EXTERNAL_BANK, unit=RESERVE_UNIT, owner_type="issuer", owner_id=issuer_id)
    programme_id = (
        await conn.execute(
            text(
                """
                INSERT INTO programmes (issuer_id, kind, name, unit, float_account_id,
                                        reserve_account_id, bank_account_id)
                VALUES (:issuer_id, :kind, :name, :unit, :float_id, :reserve_id, :bank_id)
                RETURNING id
                """
            ),
            {"issuer_id": issuer_id, "kind": kind, "name": name, "unit": unit,
             "float_id": float_id, "reserve_id": reserve_id, "bank_id": bank_id},
        )
    ).scalar_one()
    return Programme(programme_id, issuer_id, kind, name, unit, float_id, reserve_id, bank_id)


async def get_programme(conn: AsyncConnection, programme_id: int) -> Programme:
    row = (
        await conn.execute(
            text(
                "SELECT id, issuer_id, kind, name, unit, float_account_id, reserve_account_id, "
                "bank_account_id FROM programmes WHERE id = :id"
            ),
            {"id": programme_id},
        )
    ).one_or_none()
    if row is None:
        raise NotFound("no programme has this id", programme_id=programme_id)
    return Programme(*row)


async def create_merchant(
    conn: AsyncConnection, *, issuer_id: int, legal_name: str, trade_name: str, units: list[str]
) -> tuple[int, dict[str, int]]:
    """A merchant and one ledger account per unit it is paid in."""
    merchant_id = (
        await conn.execute(
            text(
                "INSERT INTO merchants (issuer_id, legal_name, trade_name) "
                "VALUES (:issuer_id, :legal_name, :trade_name) RETURNING id"
            ),
            {"issuer_id": issuer_id, "legal_name": legal_name, "trade_name": trade_name},
        )
    ).scalar_one()
    accounts = {
        unit: await open_account(conn, kind=AccountKind.MERCHANT, unit=unit, owner_type="merchant", owner_id=merchant_id)
        for unit in units
    }
    return merchant_id, accounts


async def open_wallet(conn: AsyncConnection, *, programme: Programme, display_name: str) -> tuple[int, int]:
    """A resident's wallet in a programme's unit; returns (wallet id, account id)."""
    account_id = await open_account(conn, kind=AccountKind.WALLET, unit=programme.unit, owner_type="wallet")
    wallet_id = (
        await conn.execute(
            text(
                "INSERT INTO wallets (programme_id, display_name, account_id) "
                "VALUES (:programme_id, :name, :account_id) RETURNING id"
            ),
            {"programme_id": programme.id, "name": display_name, "account_id": account_id},
        )
    ).scalar_one()
    return wallet_id, account_id


async def issue(
    conn: AsyncConnection, *, key: str, programme: Programme, to_account_id: int, amount_cents: int,
    metadata: dict | None = None,
) -> TransferResult:
    """Euros come in from outside into the reserve; as many units go out into circulation."""
    return await transfer(
        conn,
        key=key,
        kind="issue",
        postings=[
            Posting(programme.bank_account_id, -amount_cents),
            Posting(programme.reserve_account_id, amount_cents),
            Posting(programme.float_account_id, -amount_cents),
            Posting(to_account_id, amount_cents),
        ],
        metadata=metadata,
    )
