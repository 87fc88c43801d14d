"""Transfers: the only way value moves.

Every function here is a thin call to the ledger's SQL functions (``ledger_transfer``,
``ledger_resolve_hold``), which enforce idempotency, balance per unit and balance floors in
the database under row locks. This module validates shapes early, passes plain values,
and turns the database's refusals into typed errors; it never writes a balance itself.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import TextClause, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection

from ledger.errors import InvalidTransfer, NotFound, from_database

POSTINGS_MAX = 100_000
AMOUNT_CENTS_MAX = 10**15  # ten trillion euros: anything larger is a bug, not a payment
METADATA_BYTES_MAX = 16_384
KEY_LENGTH_MAX = 128
_KIND = re.compile(r"^[a-z][a-z0-9_.]{0,39}$")


@dataclass(frozen=True, slots=True)
class Posting:
    """A signed amount on one account: positive credits it, negative debits it."""

    account_id: int
    amount_cents: int


@dataclass(frozen=True, slots=True)
class TransferResult:
    transfer_id: int
    created: bool  # False: the key was seen before with the same content; nothing moved


@dataclass(frozen=True, slots=True)
class Transfer:
    id: int
    key: str
    kind: str
    phase: str
    pending_id: int | None
    reverses_id: int | None
    expires_at: datetime | None
    metadata: dict[str, Any]
    created_at: datetime
    effective_at: datetime
    postings: tuple[Posting, ...]


def _check_key(key: str) -> None:
    if not isinstance(key, str) or not 1 <= len(key) <= KEY_LENGTH_MAX:
        raise InvalidTransfer(f"the idempotency key must be 1 to {KEY_LENGTH_MAX} characters")


def _check_kind(kind: str) -> None:
    if not isinstance(kind, str) or not _KIND.match(kind):
        raise InvalidTransfer("the kind is 1 to 40 lowercase letters, digits, '_' or '.'", kind=kind)


def _metadata_json(metadata: dict[str, Any] | None) -> str:
    if not metadata:
        return "{}"
    try:
        encoded = json.dumps(metadata or {}, ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as error:
        raise InvalidTransfer(f"metadata must be plain JSON: {error}") from None
    if not isinstance(metadata or {}, dict):
        raise InvalidTransfer("metadata must be a JSON object")
    if len(encoded.encode()) > METADATA_BYTES_MAX:
        raise InvalidTransfer(f"metadata is larger than {METADATA_BYTES_MAX} bytes")
    return encoded


def _arrays(postings: Sequence[Posting]) -> tuple[list[int], list[int]]:
    if not 2 <= len(postings) <= POSTINGS_MAX:
        raise InvalidTransfer(f"a transfer has 2 to {POSTINGS_MAX} postings")
    for posting in postings:
        amount = posting.amount_cents
        if type(amount) is not int or amount == 0 or abs(amount) > AMOUNT_CENTS_MAX:
            raise InvalidTransfer(
                "every posting moves a non-zero whole number of cents", amount_cents=str(amount)
            )
    return [p.account_id for p in postings], [p.amount_cents for p in postings]


async def _call(conn: AsyncConnection, statement: TextClause, params: dict[str, Any]) -> TransferResult:
    try:
        row = (await conn.execute(statement, params)).one()
    except DBAPIError as error:
        refusal = from_database(error)
        if refusal is None:
            raise
        raise refusal from None
    return TransferResult(transfer_id=row.transfer_id, created=row.created)


# Built once: parsing a statement's text on every transfer is measurable on the hot path.
_TRANSFER_SQL = text(
    """
    SELECT transfer_id, created FROM ledger_transfer(
        :key, :kind, CAST(:ids AS bigint[]), CAST(:amounts AS bigint[]), CAST(:metadata AS jsonb),
        :effective_at, :pending, :expires_at, :reverses_id)
    """
)


async def transfer(
    conn: AsyncConnection,
    *,
    key: str,
    kind: str,
    postings: Sequence[Posting],
    metadata: dict[str, Any] | None = None,
    effective_at: datetime | None = None,
) -> TransferResult:
    """Move value now. Retrying with the same key and content returns the first result."""
    _check_key(key)
    _check_kind(kind)
    ids, amounts = _arrays(postings)
    return await _call(
        conn,
        _TRANSFER_SQL,
        {
            "key": key, "kind": kind, "ids": ids, "amounts": amounts,
            "metadata": _metadata_json(metadata), "effective_at": effective_at,
            "pending": False, "expires_at": None, "reverses_id": None,
        },
    )


async def hold(
    conn: AsyncConnection,
    *,
    key: str,
    kind: str,
    postings: Sequence[Posting],
    expires_at: datetime,
    metadata: dict[str, Any] | None = None,
) -> TransferResult:
    """Reserve funds: they count against the available balance until posted, voided or expired."""
    _check_key(key)
    _check_kind(kind)
    ids, amounts = _arrays(postings)
    return await _call(
        conn,
        _TRANSFER_SQL,
        {
            "key": key, "kind": kind, "ids": ids, "amounts": amounts,
            "metadata": _metadata_json(metadata), "effective_at": None,
            "pending": True, "expires_at": expires_at, "reverses_id": None,
        },
    )


async def reverse(
    conn: AsyncConnection, *, key: str, transfer_id: int, metadata: dict[str, Any] | None = None
) -> TransferResult:
    """Correct a posted transfer by its exact opposite; a transfer is reversed at most once."""
    _check_key(key)
    kind = (await conn.execute(text("SELECT kind FROM transfers WHERE id = :id"), {"id": transfer_id})).scalar()
    return await _call(
        conn,
        _TRANSFER_SQL,
        {
            "key": key, "kind": "reversal", "ids": None, "amounts": None,
            "metadata": _metadata_json({**(metadata or {}), "reverses_kind": kind}),
            "effective_at": None, "pending": False, "expires_at": None, "reverses_id": transfer_id,
        },
    )


_RESOLVE_SQL = text(
    """
    SELECT transfer_id, created FROM ledger_resolve_hold(
        :key, :hold_id, :action, :amount, CAST(:metadata AS jsonb))
    """
)


async def post_hold(
    conn: AsyncConnection,
    *,
    key: str,
    hold_id: int,
    amount_cents: int | None = None,
    metadata: dict[str, Any] | None = None,
) -> TransferResult:
    """Post a hold in full, or in part (two-posting holds); the rest is released."""
    _check_key(key)
    if amount_cents is not None and (type(amount_cents) is not int or amount_cents <= 0):
        raise InvalidTransfer("the amount to post is a positive whole number of cents")
    return await _call(
        conn,
        _RESOLVE_SQL,
        {"key": key, "hold_id": hold_id, "action": "post", "amount": amount_cents,
         "metadata": _metadata_json(metadata)},
    )


async def void_hold(
    conn: AsyncConnection, *, key: str, hold_id: int, metadata: dict[str, Any] | None = None
) -> TransferResult:
    _check_key(key)
    return await _call(
        conn,
        _RESOLVE_SQL,
        {"key": key, "hold_id": hold_id, "action": "void", "amount": None,
         "metadata": _metadata_json(metadata)},
    )


async def expire_due_holds(conn: AsyncConnection, *, limit: int = 1000) -> list[int]:
    """Release every hold past its deadline; returns the expired hold ids."""
    due = (
        await conn.execute(
            text(
                """
                SELECT h.id FROM transfers h
                WHERE h.phase = 'pending' AND h.expires_at <= now()
                  AND NOT EXISTS (SELECT 1 FROM transfers r WHERE r.pending_id = h.id)
                ORDER BY h.expires_at LIMIT :limit
                """
            ),
            {"limit": limit},
        )
    ).scalars().all()
    for hold_id in due:
        await _call(
            conn,
            _RESOLVE_SQL,
            {"key": f"expire:{hold_id}", "hold_id": hold_id, "action": "expire", "amount": None,
             "metadata": "{}"},
        )
    return list(due)


async def get_transfer(conn: AsyncConnection, transfer_id: int) -> Transfer:
    row = (
        await conn.execute(
            text(
                """
                SELECT t.id, t.key, t.kind, t.phase, t.pending_id, t.reverses_id, t.expires_at,
                       t.metadata, t.created_at, t.effective_at,
                       coalesce((SELECT json_agg(json_build_array(p.account_id, p.amount_cents)
                                                 ORDER BY p.account_id)
                                 FROM postings p WHERE p.transfer_id = t.id), '[]') AS postings
                FROM transfers t WHERE t.id = :id
                """
            ),
            {"id": transfer_id},
        )
    ).one_or_none()
    if row is None:
        raise NotFound("no transfer has this id", transfer_id=transfer_id)
    postings = row.postings if isinstance(row.postings, list) else json.loads(row.postings)
    metadata = row.metadata if isinstance(row.metadata, dict) else json.loads(row.metadata)
    return Transfer(
        id=row.id, key=row.key, kind=row.kind, phase=row.phase, pending_id=row.pending_id,
        reverses_id=row.reverses_id, expires_at=row.expires_at, metadata=metadata,
        created_at=row.created_at, effective_at=row.effective_at,
        postings=tuple(Posting(account_id=a, amount_cents=c) for a, c in postings),
    )
