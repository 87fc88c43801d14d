"""Scan and redeem over HTTP: preview, redeem, refund, receipts.

Every write needs an ``Idempotency-Key`` header (the phone makes one per confirmation and
resends it after a network failure): a repeat returns the first receipt (200 instead of 201)
and moves nothing. Preview and redeem are rate-limited per device session.
"""

from __future__ import annotations

import os
from datetime import datetime
from typing import Annotated, Any

import msgspec
from litestar import Controller, Request, Response, get, post
from litestar.di import NamedDependency, Provide
from litestar.params import FromPath, HeaderParameter, JSONBody
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from api.auth import bearer_token, hash_token
from api.errors import ApiError
from api.throttle import HIT_STATEMENT
from ledger import redemptions
from merchant_app_api.receipts import receipt_signing_key
from merchant_app_api.staff import (
    SCANNING_STAFF_COLUMNS,
    SCANNING_STAFF_CTE,
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


_REDEEM_TEMPLATE = f"""
    WITH {SCANNING_STAFF_CTE}
    SELECT {SCANNING_STAFF_COLUMNS}, scan.*
    FROM staff LEFT JOIN hit ON true
    LEFT JOIN LATERAL ({redemptions.SCAN_TEMPLATE.replace("{merchant}", "staff.merchant_id")}) AS scan ON true
"""
_REDEEM_SQL = {where: text(_REDEEM_TEMPLATE.replace("{where}", where))
               for where in (redemptions.SCAN_BY_ID, redemptions.SCAN_BY_CODE)}


async def _count_scan_alone(engine: AsyncEngine, limit_key: str) -> None:
    """Count a refused redemption's scan against the device's limit on its own: the
    redemption's transaction, where it was counted first, is rolled back whole."""
    async with engine.connect() as conn:
        autocommit = await conn.execution_options(isolation_level="AUTOCOMMIT")
        await autocommit.execute(_COUNT_SCAN_SQL, {"key": limit_key, "window_s": 60})


_COUNT_SCAN_SQL = text(HIT_STATEMENT)


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
        are one statement; then the ledger move, then the takings row with the signed receipt."""
        token_hash = hash_token(bearer_token(request.headers.get("authorization", "")))
        limit_key = scan_limit_key(token_hash)
        counted = False
        async with db_engine.connect() as conn:
            await conn.begin()
            try:
                found = await redemptions.lookup(conn, token=data.token, code=data.code)
                row = (await conn.execute(_REDEEM_SQL[found.where], {
                    "hash": token_hash, "key": limit_key, "window_s": 60, "client_key": idempotency_key,
                    **found.params})).one_or_none()
                counted = row is not None and row.hits is not None
                scanner = scanning_staff(row)
                client_key = _require_key(idempotency_key)
                receipt = await redemptions.take(
                    conn, receipt_signing_key(), redemptions.scanned(found, row, offset=SCANNING_STAFF_WIDTH),
                    merchant_id=scanner.merchant_id, user_id=scanner.user_id, amount_cents=data.amount_cents,
                    client_key=client_key, actor=scanner.actor,
                )
            except Exception:
                await conn.rollback()
                if counted:
                    await _count_scan_alone(db_engine, limit_key)
                raise
            await conn.commit()
        return receipt_response(receipt)

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
