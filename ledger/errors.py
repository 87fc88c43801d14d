"""Typed refusals of the domain packages, each with a stable machine-readable ``code``.

The API layer turns them into HTTP problem details in one place (``api/errors.py``); the
database's own refusals (SQLSTATE class ``CL``, raised by the ledger's SQL functions) are
turned into these types here, in :func:`from_database`, and nowhere else.
"""

from __future__ import annotations

import json
from typing import Any


class DomainError(Exception):
    """A refusal a caller can act on. ``details`` holds plain values for the client."""

    code = "domain_error"
    message = "The request was refused."

    def __init__(self, message: str | None = None, **details: Any) -> None:
        self.message = message or type(self).message
        self.details = details
        super().__init__(self.message)


class NotFound(DomainError):
    code = "not_found"
    message = "No such record."


class InvalidInput(DomainError):
    code = "invalid_input"
    message = "The request is not valid."


class InvalidTransfer(DomainError):
    code = "invalid_transfer"
    message = "The transfer is not valid."


class UnbalancedTransfer(DomainError):
    code = "unbalanced_transfer"
    message = "The postings of a transfer must sum to zero in each unit."


class AccountNotFound(DomainError):
    code = "account_not_found"
    message = "An account named in the transfer does not exist."


class InsufficientFunds(DomainError):
    code = "insufficient_funds"
    message = "The account does not hold enough to cover the amount."


class IdempotencyConflict(DomainError):
    code = "idempotency_conflict"
    message = "This idempotency key was already used for a different request."


class HoldNotFound(DomainError):
    code = "hold_not_found"
    message = "No pending hold has this id."


class HoldNotPending(DomainError):
    code = "hold_not_pending"
    message = "The hold was already posted, voided or expired."


class HoldExpired(DomainError):
    code = "hold_expired"
    message = "The hold expired before it was posted."


class AlreadyReversed(DomainError):
    code = "already_reversed"
    message = "This transfer was already reversed."


class NotReversible(DomainError):
    code = "not_reversible"
    message = "Only a posted transfer can be reversed."


class AmountExceedsHold(DomainError):
    code = "amount_exceeds_hold"
    message = "A hold can be posted for at most the amount it reserved."


class AppendOnly(DomainError):
    code = "append_only"
    message = "Ledger records are never changed or removed; correct with a reversing transfer."


_BY_SQLSTATE: dict[str, type[DomainError]] = {
    "CL001": AppendOnly,
    "CL100": InvalidTransfer,
    "CL101": UnbalancedTransfer,
    "CL102": AccountNotFound,
    "CL103": InsufficientFunds,
    "CL104": IdempotencyConflict,
    "CL105": HoldNotFound,
    "CL106": HoldNotPending,
    "CL107": HoldExpired,
    "CL108": AlreadyReversed,
    "CL109": NotReversible,
    "CL110": AmountExceedsHold,
}

# Two writers racing past the explicit checks meet at these unique constraints.
_BY_CONSTRAINT: dict[str, type[DomainError]] = {
    "transfers_reverses_id_key": AlreadyReversed,
    "transfers_pending_id_key": HoldNotPending,
    # The table's own floor constraint, behind the ledger's check: should never be reached.
    "accounts_floor": InsufficientFunds,
}


def from_database(error: BaseException) -> DomainError | None:
    """The domain error a database exception stands for, or None if it is not a refusal."""
    orig = getattr(error, "orig", error)
    driver_error = getattr(orig, "__cause__", None) or orig
    sqlstate = getattr(orig, "sqlstate", None) or getattr(driver_error, "sqlstate", None)
    if sqlstate in _BY_SQLSTATE:
        raw = getattr(driver_error, "detail", None)
        try:
            details = json.loads(raw) if raw else {}
        except ValueError:
            return _BY_SQLSTATE[sqlstate](raw)
        return _BY_SQLSTATE[sqlstate](**details)
    if sqlstate in ("23505", "23514"):
        constraint = getattr(driver_error, "constraint_name", None)
        if constraint in _BY_CONSTRAINT:
            return _BY_CONSTRAINT[constraint]()
    return None
