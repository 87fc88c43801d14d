"""The operators' view of the ledger: accounts, balances, transfers, holds, reversals.

Every write needs an ``Idempotency-Key`` header: a retried request returns the first
result (200 instead of 201) and moves nothing twice.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

import msgspec
from litestar import Controller, Response, get, post
from litestar.params import FromPath, FromQuery, HeaderParameter, JSONBody
from litestar.di import NamedDependency
from sqlalchemy.ext.asyncio import AsyncEngine

from api.auth import Role, requires
from api.errors import ApiError
from ledger.accounts import AccountKind, get_account, open_account
from ledger.balances import balance
from ledger.transfers import (
    AMOUNT_CENTS_MAX,
    KEY_LENGTH_MAX,
    POSTINGS_MAX,
    Posting,
    TransferResult,
    get_transfer,
    hold,
    post_hold,
    reverse,
    transfer,
    void_hold,
)

Cents = Annotated[int, msgspec.Meta(ge=-AMOUNT_CENTS_MAX, le=AMOUNT_CENTS_MAX)]
PositiveCents = Annotated[int, msgspec.Meta(gt=0, le=AMOUNT_CENTS_MAX)]
IdempotencyKey = Annotated[
    str | None,
    HeaderParameter(name="Idempotency-Key", required=False, description="Client-chosen id of this write"),
]


class AccountIn(msgspec.Struct, forbid_unknown_fields=True):
    kind: AccountKind
    unit: Annotated[str, msgspec.Meta(pattern=r"^[A-Z]{3,8}$")]
    owner_type: Annotated[str, msgspec.Meta(max_length=40)] | None = None
    owner_id: Annotated[str, msgspec.Meta(max_length=80)] | None = None


class AccountOut(msgspec.Struct):
    id: int
    kind: str
    unit: str
    owner_type: str | None
    owner_id: str | None
    floor_cents: int | None
    balance_cents: int
    available_cents: int
    pending_debits_cents: int
    pending_credits_cents: int


class BalanceOut(msgspec.Struct):
    account_id: int
    unit: str
    balance_cents: int
    available_cents: int
    as_of: datetime | None


class PostingIn(msgspec.Struct, forbid_unknown_fields=True):
    account_id: Annotated[int, msgspec.Meta(gt=0)]
    amount_cents: Cents


class TransferIn(msgspec.Struct, forbid_unknown_fields=True):
    kind: Annotated[str, msgspec.Meta(pattern=r"^[a-z][a-z0-9_.]{0,39}$")]
    postings: Annotated[list[PostingIn], msgspec.Meta(min_length=2, max_length=POSTINGS_MAX)]
    metadata: dict[str, Any] = {}
    effective_at: datetime | None = None


class HoldIn(msgspec.Struct, forbid_unknown_fields=True):
    kind: Annotated[str, msgspec.Meta(pattern=r"^[a-z][a-z0-9_.]{0,39}$")]
    postings: Annotated[list[PostingIn], msgspec.Meta(min_length=2, max_length=POSTINGS_MAX)]
    expires_at: datetime
    metadata: dict[str, Any] = {}


class PostHoldIn(msgspec.Struct, forbid_unknown_fields=True):
    amount_cents: PositiveCents | None = None


class ReverseIn(msgspec.Struct, forbid_unknown_fields=True):
    reason: Annotated[str, msgspec.Meta(min_length=1, max_length=500)]


class PostingOut(msgspec.Struct):
    account_id: int
    amount_cents: int


class TransferOut(msgspec.Struct):
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
    postings: list[PostingOut]


def _require_key(key: str | None) -> str:
    if not key or len(key) > KEY_LENGTH_MAX:
        raise ApiError(
            400, "idempotency_key_required",
            f"Send an Idempotency-Key header (1 to {KEY_LENGTH_MAX} characters) with every write.",
        )
    return key


async def _written(engine: AsyncEngine, result: TransferResult) -> Response[TransferOut]:
    async with engine.connect() as conn:
        written = await get_transfer(conn, result.transfer_id)
    body = TransferOut(
        id=written.id, key=written.key, kind=written.kind, phase=written.phase,
        pending_id=written.pending_id, reverses_id=written.reverses_id, expires_at=written.expires_at,
        metadata=written.metadata, created_at=written.created_at, effective_at=written.effective_at,
        postings=[PostingOut(p.account_id, p.amount_cents) for p in written.postings],
    )
    return Response(body, status_code=201 if result.created else 200)


def _postings(items: list[PostingIn]) -> list[Posting]:
    return [Posting(p.account_id, p.amount_cents) for p in items]


class LedgerController(Controller):
    path = "/ledger"
    tags = ["ledger"]
    guards = [requires(Role.OPERATOR)]

    @post("/accounts", status_code=201)
    async def open_account(self, data: JSONBody[AccountIn], db_engine: NamedDependency[AsyncEngine]) -> AccountOut:
        async with db_engine.begin() as conn:
            account_id = await open_account(
                conn, kind=data.kind, unit=data.unit, owner_type=data.owner_type, owner_id=data.owner_id
            )
            return await self._account(conn, account_id)

    @get("/accounts/{account_id:int}")
    async def account(self, account_id: FromPath[int], db_engine: NamedDependency[AsyncEngine]) -> AccountOut:
        async with db_engine.connect() as conn:
            return await self._account(conn, account_id)

    @get("/accounts/{account_id:int}/balance")
    async def balance(
        self, account_id: FromPath[int], db_engine: NamedDependency[AsyncEngine], as_of: FromQuery[datetime | None] = None
    ) -> BalanceOut:
        async with db_engine.connect() as conn:
            found = await balance(conn, account_id, as_of=as_of)
        return BalanceOut(found.account_id, found.unit, found.balance_cents, found.available_cents, found.as_of)

    @post("/transfers")
    async def transfer(
        self, data: JSONBody[TransferIn], db_engine: NamedDependency[AsyncEngine], idempotency_key: IdempotencyKey = None
    ) -> Response[TransferOut]:
        key = _require_key(idempotency_key)
        async with db_engine.begin() as conn:
            result = await transfer(
                conn, key=key, kind=data.kind, postings=_postings(data.postings),
                metadata=data.metadata, effective_at=data.effective_at,
            )
        return await _written(db_engine, result)

    @get("/transfers/{transfer_id:int}")
    async def get_transfer(self, transfer_id: FromPath[int], db_engine: NamedDependency[AsyncEngine]) -> Response[TransferOut]:
        return await _written(db_engine, TransferResult(transfer_id, created=False))

    @post("/transfers/{transfer_id:int}/reverse")
    async def reverse(
        self, transfer_id: FromPath[int], data: JSONBody[ReverseIn], db_engine: NamedDependency[AsyncEngine],
        idempotency_key: IdempotencyKey = None,
    ) -> Response[TransferOut]:
        key = _require_key(idempotency_key)
        async with db_engine.begin() as conn:
            result = await reverse(conn, key=key, transfer_id=transfer_id, metadata={"reason": data.reason})
        return await _written(db_engine, result)

    @post("/holds")
    async def hold(
        self, data: JSONBody[HoldIn], db_engine: NamedDependency[AsyncEngine], idempotency_key: IdempotencyKey = None
    ) -> Response[TransferOut]:
        key = _require_key(idempotency_key)
        async with db_engine.begin() as conn:
            result = await hold(
                conn, key=key, kind=data.kind, postings=_postings(data.postings),
                expires_at=data.expires_at, metadata=data.metadata,
            )
        return await _written(db_engine, result)

    @post("/holds/{hold_id:int}/post")
    async def post_hold(
        self, hold_id: FromPath[int], data: JSONBody[PostHoldIn], db_engine: NamedDependency[AsyncEngine],
        idempotency_key: IdempotencyKey = None,
    ) -> Response[TransferOut]:
        key = _require_key(idempotency_key)
        async with db_engine.begin() as conn:
            result = await post_hold(conn, key=key, hold_id=hold_id, amount_cents=data.amount_cents)
        return await _written(db_engine, result)

    @post("/holds/{hold_id:int}/void")
    async def void_hold(
        self, hold_id: FromPath[int], db_engine: NamedDependency[AsyncEngine], idempotency_key: IdempotencyKey = None
    ) -> Response[TransferOut]:
        key = _require_key(idempotency_key)
        async with db_engine.begin() as conn:
            result = await void_hold(conn, key=key, hold_id=hold_id)
        return await _written(db_engine, result)

    @staticmethod
    async def _account(conn, account_id: FromPath[int]) -> AccountOut:
        a = await get_account(conn, account_id)
        return AccountOut(
            a.id, a.kind, a.unit, a.owner_type, a.owner_id, a.floor_cents, a.balance_cents,
            a.available_cents, a.pending_debits_cents, a.pending_credits_cents,
        )
