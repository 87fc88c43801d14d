"""The ledger accounts settlement moves money through, opened on first use and found again.

Per issuer: fee income, VAT payable and the bank (the euros that leave for merchants' banks).
Per merchant: ``payable`` (a clearing account in euros: what the scheme owes the merchant,
negative when the merchant owes, so a carried balance is a ledger balance, never a number
kept on the side) and ``reconversion`` (units set aside by a reconversion request until paid).
Callers hold the issuer's settlement lock, so two openings of the same account cannot race.
"""

from __future__ import annotations

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from ledger.accounts import AccountKind, open_account

_KIND = {
    "fee_income": AccountKind.FEE_INCOME,
    "vat_payable": AccountKind.VAT_PAYABLE,
    "bank": AccountKind.EXTERNAL_BANK,
    "payable": AccountKind.CLEARING,
    "reconversion": AccountKind.CLEARING,
}


async def settlement_account(conn: AsyncConnection, *, owner_type: str, owner_id: int, purpose: str,
                             unit: str = "EUR") -> int:
    found = await conn.scalar(
        text(
            "SELECT account_id FROM settlement_accounts "
            "WHERE owner_type = :type AND owner_id = :id AND purpose = :purpose AND unit = :unit"
        ),
        {"type": owner_type, "id": owner_id, "purpose": purpose, "unit": unit},
    )
    if found is not None:
        return found
    account_id = await open_account(conn, kind=_KIND[purpose], unit=unit, owner_type=f"{owner_type}_{purpose}",
                                    owner_id=owner_id)
    await conn.execute(
        text(
            "INSERT INTO settlement_accounts (owner_type, owner_id, purpose, unit, account_id) "
            "VALUES (:type, :id, :purpose, :unit, :account)"
        ),
        {"type": owner_type, "id": owner_id, "purpose": purpose, "unit": unit, "account": account_id},
    )
    return account_id
