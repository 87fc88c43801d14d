"""Settlement over HTTP: fee rules and waivers, payout batches and their files, statements and
invoices; a merchant's own statements and reconversion requests.

Operators prepare; an approver or a second operator approves (the domain refuses the preparer);
operators bound to an issuer see only that issuer's batches.
"""

from __future__ import annotations

from datetime import date
from typing import Annotated, Literal

import msgspec
from litestar import Controller, Request, Response, get, post, put
from litestar.di import NamedDependency
from litestar.params import FromPath, FromQuery, HeaderParameter, JSONBody
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from api.auth import AuthUser, Role, requires
from api.errors import ApiError
from settlement import batches, documents
from ledger.scheme import get_programme
from settlement.fees import create_rule, create_waiver, list_rules
from settlement.periods import set_frequency
from settlement.reconversion import list_reconversions, request_reconversion

Period = Annotated[str, msgspec.Meta(pattern=r"^\d{4}-(\d{2}|W\d{2}|\d{2}-\d{2})$")]
Reason = Annotated[str, msgspec.Meta(min_length=1, max_length=500)]
IdempotencyKey = Annotated[
    str | None, HeaderParameter(name="Idempotency-Key", required=False, description="Client-chosen id of this write"),
]
_MEDIA = {"pain.001": "application/xml", "csv": "text/csv; charset=utf-8"}


class FeeRuleIn(msgspec.Struct, forbid_unknown_fields=True):
    issuer_id: int
    rate_bp: Annotated[int, msgspec.Meta(ge=0, le=10_000)]
    kind: Literal["takings", "reconversion"] = "takings"
    programme_id: int | None = None
    category: Annotated[str, msgspec.Meta(min_length=1, max_length=60)] | None = None
    merchant_id: int | None = None
    vat_rate_bp: Annotated[int, msgspec.Meta(ge=0, le=10_000)] = 2000
    fixed_cents: Annotated[int, msgspec.Meta(ge=0, le=10**8)] = 0
    min_cents: Annotated[int, msgspec.Meta(ge=0, le=10**11)] = 0
    max_cents: Annotated[int, msgspec.Meta(ge=0, le=10**11)] | None = None
    valid_from: date = date(2000, 1, 1)
    valid_until: date | None = None


class WaiverIn(msgspec.Struct, forbid_unknown_fields=True):
    issuer_id: int
    sponsor_name: Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
    merchant_ids: Annotated[list[int], msgspec.Meta(max_length=10_000)] | None = None
    programme_id: int | None = None
    valid_from: date = date(2000, 1, 1)
    valid_until: date | None = None


class PrepareIn(msgspec.Struct, forbid_unknown_fields=True):
    issuer_id: int
    period: Period


class ReasonIn(msgspec.Struct, forbid_unknown_fields=True):
    reason: Reason


class FrequencyIn(msgspec.Struct, forbid_unknown_fields=True):
    frequency: Literal["monthly", "weekly", "daily"]


class ReconversionIn(msgspec.Struct, forbid_unknown_fields=True):
    amount_cents: Annotated[int, msgspec.Meta(gt=0, le=10**15)]


def _merchant(user: AuthUser) -> int:
    if user.merchant_id is None:
        raise ApiError(403, "forbidden", "This account is not attached to a merchant.")
    return user.merchant_id


def _issuer(user: AuthUser, issuer_id: int) -> int:
    if user.issuer_id is not None and user.issuer_id != issuer_id:
        raise ApiError(403, "forbidden", "You act for another issuer.")
    return issuer_id


async def _visible_batch(conn: AsyncConnection, user: AuthUser, batch_id: int) -> batches.Batch:
    batch = await batches.get_batch(conn, batch_id)
    _issuer(user, batch.issuer_id)
    return batch


async def _batch_body(conn: AsyncConnection, batch_id: int) -> dict:
    batch = await batches.get_batch(conn, batch_id)
    lines = await batches.batch_lines(conn, batch_id)
    payments = await batches.batch_payments(conn, batch_id)
    files = sorted(await batches.batch_files(conn, batch_id))
    return {**_fields(batch), "totals": batches.batch_totals(lines, payments),
            "lines": [_fields(line) for line in lines], "payments": [_fields(payment) for payment in payments],
            "files": [f"/settlement/batches/{batch_id}/files/{kind}" for kind in files]}


def _fields(value) -> dict:
    return {name: getattr(value, name) for name in value.__slots__}


class SettlementController(Controller):
    path = "/settlement"
    tags = ["settlement"]
    guards = [requires(Role.OPERATOR, Role.APPROVER)]

    @post("/fee-rules", status_code=201, guards=[requires(Role.OPERATOR)])
    async def create_fee_rule(self, request: Request, data: JSONBody[FeeRuleIn],
                              db_engine: NamedDependency[AsyncEngine]) -> dict:
        async with db_engine.begin() as conn:
            rule = await create_rule(conn, actor=request.user.email, **{**_fields(data), "issuer_id": _issuer(
                request.user, data.issuer_id)})
        return _fields(rule)

    @get("/fee-rules")
    async def fee_rules(self, request: Request, issuer_id: FromQuery[int],
                        db_engine: NamedDependency[AsyncEngine]) -> list[dict]:
        async with db_engine.connect() as conn:
            return [_fields(rule) for rule in await list_rules(conn, _issuer(request.user, issuer_id))]

    @post("/waivers", status_code=201, guards=[requires(Role.OPERATOR)])
    async def create_waiver(self, request: Request, data: JSONBody[WaiverIn],
                            db_engine: NamedDependency[AsyncEngine]) -> dict:
        async with db_engine.begin() as conn:
            waiver = await create_waiver(conn, actor=request.user.email, **{**_fields(data), "issuer_id": _issuer(
                request.user, data.issuer_id)})
        return _fields(waiver)

    @put("/programmes/{programme_id:int}/frequency", guards=[requires(Role.OPERATOR)])
    async def set_frequency(self, request: Request, programme_id: FromPath[int], data: JSONBody[FrequencyIn],
                            db_engine: NamedDependency[AsyncEngine]) -> dict:
        async with db_engine.begin() as conn:
            programme = await get_programme(conn, programme_id)
            _issuer(request.user, programme.issuer_id)
            await set_frequency(conn, programme_id=programme_id, frequency=data.frequency, actor=request.user.email)
        return {"programme_id": programme_id, "frequency": data.frequency}

    @post("/batches", guards=[requires(Role.OPERATOR)])
    async def prepare(self, request: Request, data: JSONBody[PrepareIn],
                      db_engine: NamedDependency[AsyncEngine]) -> Response[dict]:
        issuer_id = _issuer(request.user, data.issuer_id)
        async with db_engine.begin() as conn:
            before = {b.id for b in await batches.list_batches(conn, issuer_id)}
            batch = await batches.prepare(conn, issuer_id=issuer_id, period=data.period, user_id=request.user.id)
            body = await _batch_body(conn, batch.id)
        return Response(body, status_code=200 if batch.id in before else 201)

    @get("/batches")
    async def list_batches(self, request: Request, db_engine: NamedDependency[AsyncEngine],
                           issuer_id: FromQuery[int | None] = None) -> list[dict]:
        async with db_engine.connect() as conn:
            found = await batches.list_batches(conn, request.user.issuer_id or issuer_id)
        return [_fields(batch) for batch in found]

    @get("/batches/{batch_id:int}")
    async def batch(self, request: Request, batch_id: FromPath[int], db_engine: NamedDependency[AsyncEngine]) -> dict:
        async with db_engine.connect() as conn:
            await _visible_batch(conn, request.user, batch_id)
            return await _batch_body(conn, batch_id)

    async def _step(self, engine: AsyncEngine, request: Request, batch_id: int, step, **kwargs) -> dict:
        async with engine.begin() as conn:
            await _visible_batch(conn, request.user, batch_id)
            await step(conn, batch_id=batch_id, user_id=request.user.id, **kwargs)
            return await _batch_body(conn, batch_id)

    @post("/batches/{batch_id:int}/approve", status_code=200)
    async def approve(self, request: Request, batch_id: FromPath[int], db_engine: NamedDependency[AsyncEngine]) -> dict:
        return await self._step(db_engine, request, batch_id, batches.approve)

    @post("/batches/{batch_id:int}/reject", status_code=200)
    async def reject(self, request: Request, batch_id: FromPath[int], data: JSONBody[ReasonIn],
                     db_engine: NamedDependency[AsyncEngine]) -> dict:
        return await self._step(db_engine, request, batch_id, batches.reject, reason=data.reason)

    @post("/batches/{batch_id:int}/export", status_code=200)
    async def export(self, request: Request, batch_id: FromPath[int], db_engine: NamedDependency[AsyncEngine]) -> dict:
        return await self._step(db_engine, request, batch_id, batches.export)

    @post("/batches/{batch_id:int}/paid", status_code=200)
    async def mark_paid(self, request: Request, batch_id: FromPath[int],
                        db_engine: NamedDependency[AsyncEngine]) -> dict:
        return await self._step(db_engine, request, batch_id, batches.mark_paid)

    @post("/batches/{batch_id:int}/payments/{merchant_id:int}/returned", status_code=200)
    async def mark_returned(self, request: Request, batch_id: FromPath[int], merchant_id: FromPath[int],
                            data: JSONBody[ReasonIn], db_engine: NamedDependency[AsyncEngine]) -> dict:
        return await self._step(db_engine, request, batch_id, batches.mark_returned, merchant_id=merchant_id,
                                reason=data.reason)

    @get("/batches/{batch_id:int}/files/{kind:str}")
    async def file(self, request: Request, batch_id: FromPath[int], kind: FromPath[str],
                   db_engine: NamedDependency[AsyncEngine]) -> Response[bytes]:
        async with db_engine.connect() as conn:
            batch = await _visible_batch(conn, request.user, batch_id)
            files = await batches.batch_files(conn, batch_id)
        if kind not in files:
            raise ApiError(404, "not_found", "This batch has no such file (files exist once it is exported).",
                           files=sorted(files))
        name = f"circuit-{batch.period}-batch-{batch_id}.{'xml' if kind == 'pain.001' else 'csv'}"
        return Response(files[kind], media_type=_MEDIA[kind],
                        headers={"Content-Disposition": f'attachment; filename="{name}"'})

    @get("/batches/{batch_id:int}/merchants/{merchant_id:int}/{document:str}")
    async def document(self, request: Request, batch_id: FromPath[int], merchant_id: FromPath[int],
                       document: FromPath[str], db_engine: NamedDependency[AsyncEngine]) -> Response[bytes]:
        async with db_engine.connect() as conn:
            await _visible_batch(conn, request.user, batch_id)
            return await _document(conn, batch_id, merchant_id, document)


async def _document(conn: AsyncConnection, batch_id: int, merchant_id: int, document: str) -> Response[bytes]:
    renderers = {"statement.pdf": (documents.statement_pdf, "application/pdf"),
                 "statement.csv": (documents.statement_csv, "text/csv; charset=utf-8"),
                 "invoice.pdf": (documents.invoice_pdf, "application/pdf")}
    if document not in renderers:
        raise ApiError(404, "not_found", "Documents are statement.pdf, statement.csv and invoice.pdf.")
    render, media_type = renderers[document]
    content = render(await documents.statement(conn, batch_id=batch_id, merchant_id=merchant_id))
    return Response(content, media_type=media_type,
                    headers={"Content-Disposition": f'attachment; filename="batch-{batch_id}-{document}"'})


class MerchantSettlementController(Controller):
    """A merchant's own side: its statements and invoices, and reconversion requests (owner only)."""

    path = "/settlement/merchant"
    tags = ["settlement"]
    guards = [requires(Role.MERCHANT_OWNER)]

    @get("/batches")
    async def my_batches(self, request: Request, db_engine: NamedDependency[AsyncEngine]) -> list[dict]:
        merchant_id = _merchant(request.user)
        async with db_engine.connect() as conn:
            found = await batches.list_batches(conn, request.user.issuer_id)
            mine = []
            for batch in found:
                payments = await batches.batch_payments(conn, batch.id, merchant_id)
                if payments and batch.status in ("exported", "paid"):
                    mine.append({"batch_id": batch.id, "period": batch.period, "status": batch.status,
                                 "payout_cents": payments[0].payout_cents,
                                 "documents": [f"/settlement/merchant/batches/{batch.id}/{name}"
                                               for name in ("statement.pdf", "statement.csv", "invoice.pdf")]})
        return mine

    @get("/batches/{batch_id:int}/{document:str}")
    async def my_document(self, request: Request, batch_id: FromPath[int], document: FromPath[str],
                          db_engine: NamedDependency[AsyncEngine]) -> Response[bytes]:
        async with db_engine.connect() as conn:
            batch = await batches.get_batch(conn, batch_id)
            if batch.status not in ("exported", "paid"):
                raise ApiError(404, "not_found", "Statements exist once the batch is exported.")
            return await _document(conn, batch_id, _merchant(request.user), document)

    @post("/reconversions")
    async def reconvert(self, request: Request, data: JSONBody[ReconversionIn], db_engine: NamedDependency[AsyncEngine],
                        idempotency_key: IdempotencyKey = None) -> Response[dict]:
        if not idempotency_key or len(idempotency_key) > 64:
            raise ApiError(400, "idempotency_key_required",
                           "Send an Idempotency-Key header (1 to 64 characters) with every write.")
        merchant_id = _merchant(request.user)
        async with db_engine.begin() as conn:
            before = {r.id for r in await list_reconversions(conn, merchant_id)}
            found = await request_reconversion(conn, merchant_id=merchant_id,
                                               amount_cents=data.amount_cents, key=idempotency_key,
                                               actor=request.user.email)
        return Response(_fields(found), status_code=200 if found.id in before else 201)

    @get("/reconversions")
    async def my_reconversions(self, request: Request, db_engine: NamedDependency[AsyncEngine]) -> list[dict]:
        async with db_engine.connect() as conn:
            return [_fields(r) for r in await list_reconversions(conn, _merchant(request.user))]
