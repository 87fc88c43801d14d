"""Invariants anyone can check at any time (``circuit check``).

Each check is one SQL query that recomputes a figure from the postings and compares it
with what the ledger holds, so a row changed behind the ledger's back shows up here.
Checks report discrepancies as values; they never repair anything.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection


@dataclass(frozen=True, slots=True)
class Discrepancy:
    check: str
    subject: str
    expected: int
    found: int

    def __str__(self) -> str:
        return f"{self.check}: {self.subject}: expected {self.expected}, found {self.found}"


@dataclass(frozen=True, slots=True)
class CheckReport:
    transfers: int
    accounts: int
    discrepancies: tuple[Discrepancy, ...]

    @property
    def ok(self) -> bool:
        return not self.discrepancies


_CHECKS: dict[str, str] = {
    # Every transfer's postings sum to zero in each unit.
    "transfer_balanced": """
        SELECT 'transfer ' || p.transfer_id || ' (' || a.unit || ')', 0, sum(p.amount_cents)
        FROM postings p JOIN accounts a ON a.id = p.account_id
        GROUP BY p.transfer_id, a.unit HAVING sum(p.amount_cents) <> 0
        ORDER BY p.transfer_id
    """,
    # Every account's posted balance is the sum of its posted postings.
    "account_balance": """
        SELECT 'account ' || a.id, coalesce(s.total, 0), a.balance_cents
        FROM accounts a LEFT JOIN (
            SELECT p.account_id, sum(p.amount_cents) AS total FROM postings p
            JOIN transfers t ON t.id = p.transfer_id
            WHERE t.phase IN ('posted', 'post_pending') GROUP BY p.account_id
        ) s ON s.account_id = a.id
        WHERE a.balance_cents <> coalesce(s.total, 0) ORDER BY a.id
    """,
    # Every account's reserved amount is what its unresolved holds reserve.
    "account_pending": """
        SELECT 'account ' || a.id, coalesce(s.debits, 0), a.pending_debits_cents
        FROM accounts a LEFT JOIN (
            SELECT p.account_id, sum(greatest(-p.amount_cents, 0)) AS debits FROM postings p
            JOIN transfers t ON t.id = p.transfer_id
            WHERE t.phase = 'pending'
              AND NOT EXISTS (SELECT 1 FROM transfers r WHERE r.pending_id = t.id)
            GROUP BY p.account_id
        ) s ON s.account_id = a.id
        WHERE a.pending_debits_cents <> coalesce(s.debits, 0) ORDER BY a.id
    """,
    # Value is neither created nor destroyed: all balances of a unit sum to zero.
    "unit_sums_to_zero": """
        SELECT 'unit ' || a.unit, 0, sum(a.balance_cents) FROM accounts a
        GROUP BY a.unit HAVING sum(a.balance_cents) <> 0 ORDER BY a.unit
    """,
    # Units (or vouchers) in circulation are backed one to one by the euro reserve.
    "circulation_equals_reserve": """
        SELECT 'programme ' || g.id || ' ' || g.name, -f.balance_cents, r.balance_cents
        FROM programmes g JOIN accounts f ON f.id = g.float_account_id
        JOIN accounts r ON r.id = g.reserve_account_id
        WHERE -f.balance_cents <> r.balance_cents ORDER BY g.id
    """,
}


async def check_ledger(conn: AsyncConnection) -> CheckReport:
    found: list[Discrepancy] = []
    for name, sql in _CHECKS.items():
        for subject, expected, actual in (await conn.execute(text(sql))).all():
            found.append(Discrepancy(name, subject, int(expected), int(actual)))
    transfers = (await conn.execute(text("SELECT count(*) FROM transfers"))).scalar_one()
    accounts = (await conn.execute(text("SELECT count(*) FROM accounts"))).scalar_one()
    return CheckReport(transfers=transfers, accounts=accounts, discrepancies=tuple(found))
