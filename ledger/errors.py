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
    message_fr = "La demande a été refusée."

    def __init__(self, message: str | None = None, *, message_fr: str | None = None, **details: Any) -> None:
        self.message = message or type(self).message
        # A caller's own English sentence has no French twin unless it gives one.
        self.message_fr = message_fr or (type(self).message_fr if message is None else None)
        self.details = details
        super().__init__(self.message)


class NotFound(DomainError):
    code = "not_found"
    message = "No such record."
    message_fr = "Aucun enregistrement ne correspond."


class InvalidInput(DomainError):
    code = "invalid_input"
    message = "The request is not valid."
    message_fr = "La demande n'est pas valide."


class InvalidTransfer(DomainError):
    code = "invalid_transfer"
    message = "The transfer is not valid."
    message_fr = "Le virement n'est pas valide."


class UnbalancedTransfer(DomainError):
    code = "unbalanced_transfer"
    message = "The postings of a transfer must sum to zero in each unit."
    message_fr = "Les écritures d'un virement doivent s'équilibrer dans chaque unité."


class AccountNotFound(DomainError):
    code = "account_not_found"
    message = "An account named in the transfer does not exist."
    message_fr = "Un compte cité dans le virement n'existe pas."


class InsufficientFunds(DomainError):
    code = "insufficient_funds"
    message = "The account does not hold enough to cover the amount."
    message_fr = "Le compte ne contient pas assez pour couvrir ce montant."


class IdempotencyConflict(DomainError):
    code = "idempotency_conflict"
    message = "This idempotency key was already used for a different request."
    message_fr = "Cette clé d'idempotence a déjà servi pour une autre demande."


class HoldNotFound(DomainError):
    code = "hold_not_found"
    message = "No pending hold has this id."
    message_fr = "Aucune réservation ne correspond."


class HoldNotPending(DomainError):
    code = "hold_not_pending"
    message = "The hold was already posted, voided or expired."
    message_fr = "Cette réservation n'est plus en attente."


class HoldExpired(DomainError):
    code = "hold_expired"
    message = "The hold expired before it was posted."
    message_fr = "Cette réservation a expiré."


class AlreadyReversed(DomainError):
    code = "already_reversed"
    message = "This transfer was already reversed."
    message_fr = "Ce virement a déjà été annulé."


class NotReversible(DomainError):
    code = "not_reversible"
    message = "Only a posted transfer can be reversed."
    message_fr = "Ce virement ne peut pas être annulé."


class AmountExceedsHold(DomainError):
    code = "amount_exceeds_hold"
    message = "A hold can be posted for at most the amount it reserved."
    message_fr = "Le montant dépasse la réservation."


class AppendOnly(DomainError):
    code = "append_only"
    message = "Ledger records are never changed or removed; correct with a reversing transfer."
    message_fr = "Cet enregistrement ne peut être ni modifié ni supprimé."


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
        return refusal_of(sqlstate, getattr(driver_error, "detail", None))
    if sqlstate in ("23505", "23514"):
        constraint = getattr(driver_error, "constraint_name", None)
        if constraint in _BY_CONSTRAINT:
            return _BY_CONSTRAINT[constraint]()
    return None


def refusal_of(sqlstate: str, detail: str | None) -> DomainError | None:
    """The domain error a ledger refusal (SQLSTATE ``CL…`` and its DETAIL text) stands for,
    or None; for a refusal caught inside the database and returned as values."""
    if sqlstate not in _BY_SQLSTATE:
        return None
    try:
        details = json.loads(detail) if detail else {}
    except ValueError:
        return _BY_SQLSTATE[sqlstate](detail)
    return _BY_SQLSTATE[sqlstate](**details)
