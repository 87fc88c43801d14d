"""Scan and redeem over HTTP: preview, redeem, refund, receipts.

Every write needs an ``Idempotency-Key`` header (the phone makes one per confirmation and
resends it after a network failure): a repeat returns the first receipt (200 instead of 201)
and moves nothing. Preview and redeem are rate-limited per device session.

Redemptions that reach one server process together share a transaction (and so one durable
commit): each request checks its token's signature, then waits while one task runs the
batch (see ``_Batcher``). Each stays its own ledger transfer, takings row, audit events and
receipt, and is refused alone.
"""

from __future__ import annotations

import asyncio
import os
import weakref
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any

import msgspec
from litestar import Controller, Request, Response, get, post
from litestar.di import NamedDependency, Provide
from litestar.params import FromPath, HeaderParameter, JSONBody
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from api.auth import bearer_token, hash_token
from api.errors import ApiError
from ledger import redemptions
from ledger.errors import DomainError
from merchant_app_api.receipts import receipt_signing_key
from merchant_app_api.staff import (
    SCANNING_STAFF_COLUMNS,
    SCANNING_STAFF_CTE,
    SCANNING_STAFF_JOINS,
    SCANNING_STAFF_WIDTH,
    Staff,
    provide_scanning_staff,
    provide_staff,
    scan_limit_key,
    scanning_staff,
)

REFUND_WINDOW_DAYS = int(os.environ.get("CIRCUIT_REFUND_WINDOW_DAYS", str(redemptions.REFUND_WINDOW_DAYS_DEFAULT)))

IdempotencyKey = Annotated[
    str | None,
    HeaderParameter(name="Idempotency-Key", required=False, description="Client-chosen id of this write"),
]
Token = Annotated[str, msgspec.Meta(max_length=400)]
Code = Annotated[str, msgspec.Meta(max_length=40)]


class ScanIn(msgspec.Struct, forbid_unknown_fields=True):
    token: Token | None = None
    code: Code | None = None


class RedeemIn(msgspec.Struct, forbid_unknown_fields=True):
    # Any value is let through here so that a wrong amount (negative, decimal, text) gets the
    # scheme's own refusal ``amount_invalid`` in both languages, not a generic validation error.
    amount_cents: Any = None
    token: Token | None = None
    code: Code | None = None


class RefusalOut(msgspec.Struct):
    code: str
    message: str
    message_fr: str
    details: dict[str, Any]


class PreviewOut(msgspec.Struct):
    voucher_id: int
    programme_id: int
    programme_name: str
    unit: str
    balance_cents: int
    expires_at: datetime
    partial_redemption: bool
    code_hint: str
    accepted: bool
    refusal: RefusalOut | None


class ReceiptOut(msgspec.Struct):
    receipt: dict[str, Any]
    signature: str
    key_id: str
    algorithm: str = "ed25519"


def _require_key(key: str | None) -> str:
    if not key or len(key) > redemptions.CLIENT_KEY_LENGTH_MAX:
        raise ApiError(400, "idempotency_key_required",
                       f"Send an Idempotency-Key header (1 to {redemptions.CLIENT_KEY_LENGTH_MAX} characters) with every write.",
                       detail_fr="Envoyez un en-tête Idempotency-Key avec chaque écriture.")
    return key


def receipt_response(receipt: redemptions.Receipt) -> Response[ReceiptOut]:
    return Response(ReceiptOut(receipt.body, receipt.signature, receipt.key_id),
                    status_code=200 if receipt.replayed else 201)


# What a batch of redemptions reads, in one statement: for each request (``item``, in its
# order), its token's staff member, its scan counted against the device's limit, and the scan
# (the voucher by the token's id or the typed code's, the shop, an earlier answer under the
# request's key, the programme's rules).
_REDEEM_SQL = text(f"""
    WITH item AS (
        SELECT * FROM unnest(CAST(:hashes AS bytea[]), CAST(:limit_keys AS text[]), CAST(:client_keys AS text[]),
                             CAST(:voucher_ids AS bigint[]), CAST(:codes AS text[]))
                      WITH ORDINALITY AS i(hash, limit_key, client_key, voucher_id, code, n)),
    {SCANNING_STAFF_CTE}
    SELECT {SCANNING_STAFF_COLUMNS}, scan.*
    FROM item {SCANNING_STAFF_JOINS}
    LEFT JOIN LATERAL ({redemptions.SCAN_TEMPLATE.replace("{merchant}", "staff.merchant_id")
                        .replace("{client_key}", "item.client_key")
                        .replace("{where}", "v.id = coalesce(item.voucher_id, (SELECT c.id FROM vouchers c WHERE c.code = item.code))")
                        }) AS scan ON true
    ORDER BY item.n
""")

# At most this many redemptions share a transaction. Each is a subtransaction of
# merchant_redeem_moves, and PostgreSQL keeps up to 64 of a transaction's subtransactions in
# shared memory; past that, every snapshot taken elsewhere gets slower.
REDEEM_BATCH_SIZE_MAX = 64
# A batch refused whole by the database (a deadlock with another process's batch, a
# serialization failure) was rolled back whole, so nothing of it happened: it runs again, up
# to this many times in all.
REDEEM_BATCH_ATTEMPTS_MAX = 3
_RETRY_SQLSTATES = frozenset({"40P01", "40001"})
# For the batch's transaction only: its statements (and the ledger functions' own) keep their
# generic plans. Given the arrays' real lengths, PostgreSQL would find a custom plan cheaper
# every time and plan the batch's read again on every execution, which costs more than
# running it for a small batch (measured: ~1 ms a batch, a batch of one slower than before).
_GENERIC_PLANS_SQL = text("SET LOCAL plan_cache_mode = force_generic_plan")
# Before taking a batch, the event loop turns this many times (no timer, no idle wait): one
# to read what the sockets hold, one to run those requests up to the queue, one for
# stragglers. Without it a batch often left behind requests already received (measured: 15
# redemptions a batch on average at 64 clients, ~1,020/s; with it 28, ~1,200/s, less CPU
# per redemption; a 1 ms timer instead: 29 a batch but ~1,060/s).
_LOOP_TURNS_BEFORE_BATCH = 3


@dataclass(frozen=True, slots=True)
class _Redemption:
    """One request, as its handler checked it: its token's hash, the scanned voucher (its
    signature verified), and what it asks, not checked yet (the order of refusals is the batch's)."""

    token_hash: bytes
    found: redemptions.Lookup
    client_key: str | None
    amount_cents: Any


async def _redeem_batch(conn: AsyncConnection, batch: list[_Redemption]) -> list[redemptions.Receipt | Exception]:
    """Each redemption's receipt or refusal, in the caller's transaction: one statement reads
    for all; each is refused in the order a single request is (401, 403, 429,
    ``totp_setup_required``, the idempotency key, then the voucher's refusals); the others are
    taken together (:func:`redemptions.take_many`). Refused requests keep their counted scan:
    the transaction commits."""
    rows = (await conn.execute(_REDEEM_SQL, {
        "hashes": [one.token_hash for one in batch], "limit_keys": [scan_limit_key(one.token_hash) for one in batch],
        "client_keys": [one.client_key for one in batch], "voucher_ids": [one.found.voucher_id for one in batch],
        "codes": [one.found.code for one in batch], "window_s": 60})).all()
    assert len(rows) == len(batch)
    outcomes: list[redemptions.Receipt | Exception | None] = [None] * len(batch)
    moves: list[redemptions.Move] = []
    moving: list[int] = []
    for at, (one, row) in enumerate(zip(batch, rows)):
        try:
            scanner = scanning_staff(row)
            move = redemptions.checked(
                redemptions.scanned(one.found, row, offset=SCANNING_STAFF_WIDTH), merchant_id=scanner.merchant_id,
                user_id=scanner.user_id, amount_cents=one.amount_cents, client_key=_require_key(one.client_key),
                actor=scanner.actor)
        except (ApiError, DomainError) as refusal:
            outcomes[at] = refusal
            continue
        if isinstance(move, redemptions.Receipt):
            outcomes[at] = move
        else:
            moves.append(move)
            moving.append(at)
    if moves:
        for at, outcome in zip(moving, await redemptions.take_many(conn, receipt_signing_key(), moves)):
            outcomes[at] = outcome
    return outcomes  # type: ignore[return-value]  # every slot was filled above


class _Batcher:
    """The redemptions of one server process (one engine, one event loop) in batches: each
    request waits for its outcome while one task runs batch after batch, each made of every
    request that arrived while the previous one ran (no timer: a request alone is a batch of
    one, after a few turns of the event loop), in one transaction with one durable commit."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = weakref.ref(engine)  # weak: ``_batchers`` must not keep its key alive
        self.loop = asyncio.get_running_loop()
        self._waiting: list[tuple[_Redemption, asyncio.Future[redemptions.Receipt]]] = []
        self._draining: asyncio.Task[None] | None = None

    @property
    def waiting(self) -> int:
        """How many requests wait for the next batch."""
        return len(self._waiting)

    async def redeem(self, redemption: _Redemption) -> redemptions.Receipt:
        future: asyncio.Future[redemptions.Receipt] = self.loop.create_future()
        self._waiting.append((redemption, future))
        if self._draining is None:
            self._draining = asyncio.create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        batch: list[tuple[_Redemption, asyncio.Future[redemptions.Receipt]]] = []
        try:
            while self._waiting:
                for _ in range(_LOOP_TURNS_BEFORE_BATCH):
                    await asyncio.sleep(0)
                batch = self._waiting[:REDEEM_BATCH_SIZE_MAX]
                del self._waiting[:REDEEM_BATCH_SIZE_MAX]
                await self._settle(batch)
        finally:
            self._draining = None
            for _, future in [*batch, *self._waiting]:  # only when cancelled: the server stops
                future.cancel()
            self._waiting.clear()

    async def _settle(self, batch: list[tuple[_Redemption, asyncio.Future[redemptions.Receipt]]]) -> None:
        try:
            outcomes = await self._run([redemption for redemption, _ in batch])
        except Exception as error:
            if len(batch) > 1:  # it may be one request's doing: each alone, so that only it fails
                for one in batch:
                    await self._settle([one])
                return
            outcomes = [error]
        for (_, future), outcome in zip(batch, outcomes):
            if future.done():  # its client went away
                continue
            if isinstance(outcome, Exception):
                future.set_exception(outcome)
            else:
                future.set_result(outcome)

    async def _run(self, batch: list[_Redemption]) -> list[redemptions.Receipt | Exception]:
        attempt = 1
        while True:
            try:
                engine = self._engine()
                assert engine is not None, "a request of this engine is waiting, so it is alive"
                async with engine.connect() as conn:
                    await conn.begin()
                    await conn.execute(_GENERIC_PLANS_SQL)
                    outcomes = await _redeem_batch(conn, batch)
                    await conn.commit()
                return outcomes
            except DBAPIError as error:
                sqlstate = getattr(error.orig, "sqlstate", None)
                if sqlstate not in _RETRY_SQLSTATES or attempt >= REDEEM_BATCH_ATTEMPTS_MAX:
                    raise
                attempt += 1


_batchers: weakref.WeakKeyDictionary[AsyncEngine, _Batcher] = weakref.WeakKeyDictionary()


def _batcher(engine: AsyncEngine) -> _Batcher:
    batcher = _batchers.get(engine)
    if batcher is None or batcher.loop is not asyncio.get_running_loop():
        batcher = _batchers[engine] = _Batcher(engine)
    return batcher


class RedeemController(Controller):
    path = "/merchant"
    tags = ["merchant app"]
    dependencies = {"staff": Provide(provide_staff), "scanner": Provide(provide_scanning_staff)}

    @post("/preview", status_code=200)
    async def preview(self, scanner: NamedDependency[Staff], data: JSONBody[ScanIn], db_engine: NamedDependency[AsyncEngine]) -> PreviewOut:
        """What the scanned voucher is, and whether this shop can take it now (and if not, why)."""
        async with db_engine.connect() as conn:
            found = await redemptions.preview(conn, merchant_id=scanner.merchant_id, token=data.token, code=data.code)
        refusal = found.refusal
        return PreviewOut(
            found.voucher_id, found.programme_id, found.programme_name, found.unit, found.balance_cents,
            found.expires_at, found.partial_redemption, found.code_hint, refusal is None,
            RefusalOut(refusal.code, refusal.message, refusal.message_fr, refusal.details) if refusal else None,
        )

    @post("/redeem", exclude_from_auth=True)
    async def redeem(
        self, request: Request[Any, Any, Any], data: JSONBody[RedeemIn], db_engine: NamedDependency[AsyncEngine],
        idempotency_key: IdempotencyKey = None,
    ) -> Response[ReceiptOut]:
        """The till's hot path: the token is checked here rather than by the middleware, so that
        the session, the device's rate limit, the voucher, the shop and the programme's rules
        are read in one statement, for this request and the others of its batch; then the
        ledger moves, then the takings rows with the signed receipts, then one commit."""
        token_hash = hash_token(bearer_token(request.headers.get("authorization", "")))
        found = await redemptions.lookup(db_engine, token=data.token, code=data.code)
        return receipt_response(await _batcher(db_engine).redeem(
            _Redemption(token_hash, found, idempotency_key, data.amount_cents)))

    @post("/takings/{taking_id:int}/refund")
    async def refund(
        self, staff: NamedDependency[Staff], taking_id: FromPath[int], db_engine: NamedDependency[AsyncEngine],
        idempotency_key: IdempotencyKey = None,
    ) -> Response[ReceiptOut]:
        client_key = _require_key(idempotency_key)
        async with db_engine.begin() as conn:
            receipt = await redemptions.refund(
                conn, receipt_signing_key(), merchant_id=staff.merchant_id, user_id=staff.user_id,
                is_owner=staff.is_owner, taking_id=taking_id, client_key=client_key, actor=staff.actor,
                window_days=REFUND_WINDOW_DAYS,
            )
        return receipt_response(receipt)

    @get("/takings/{taking_id:int}/receipt")
    async def receipt(self, staff: NamedDependency[Staff], taking_id: FromPath[int], db_engine: NamedDependency[AsyncEngine]) -> ReceiptOut:
        async with db_engine.connect() as conn:
            found = await redemptions.receipt_of(conn, taking_id=taking_id, merchant_id=staff.merchant_id)
        return ReceiptOut(found.body, found.signature, found.key_id)
