"""Vouchers over HTTP: programmes (operators), employers and their orders, issued vouchers,
their printable and digital forms, the public key set and the public balance enquiry.

Thin controllers: JSON shapes and auth here, every rule in ``ledger.programmes``,
``ledger.employers``, ``ledger.orders``, ``ledger.vouchers`` and ``ledger.voucher_print``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import hmac
import os
import time
from collections.abc import AsyncIterator
from datetime import date, datetime, time as clock_time, timedelta, timezone
from typing import Annotated, BinaryIO

import msgspec
import structlog
from litestar import Controller, Request, Response, get, patch, post, put
from litestar.di import NamedDependency
from litestar.openapi import ResponseSpec
from litestar.openapi.spec import OpenAPIMediaType, OpenAPIType, Operation, RequestBody, Schema
from litestar.params import FromPath, JSONBody
from litestar.response import Stream
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from api.auth import AuthUser, Role, create_user, requires
from api.errors import ApiError
from api.throttle import client_ip, hit
from audit.chain import set_actor
from ledger import employers as employer_domain
from ledger import orders as order_domain
from ledger import programmes as programme_domain
from ledger import vouchers as voucher_domain
from ledger import voucher_print
from ledger.cobranding import LOGO_BYTES_MAX, check_logo
from ledger.order_lines import CSV_BYTES_MAX, check_lines, parse_csv
from ledger.programmes import PARIS, ProgrammeRules
from ledger.tokens import format_code

log = structlog.get_logger("vouchers")

KEYS_PATH = "/.well-known/circuit-voucher-keys.json"
BALANCE_PATH = "/public/vouchers/balance"
PAGE_PREFIX = "/v/"
BALANCE_REQUESTS_PER_MINUTE = 10
BALANCE_KEY_PREFIX = "voucher-balance:ip:"

# --- wire shapes --------------------------------------------------------------------------

Cents = Annotated[int, msgspec.Meta(ge=-(10**12), le=10**12)]
Category = Annotated[str, msgspec.Meta(pattern=r"^[a-z0-9][a-z0-9_.-]{0,39}$")]


class IssuerIn(msgspec.Struct, forbid_unknown_fields=True):
    name: Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
    siren: Annotated[str, msgspec.Meta(max_length=20)]


class IssuerOut(msgspec.Struct):
    id: int
    name: str
    siren: str


class Texts(msgspec.Struct, forbid_unknown_fields=True):
    name: Annotated[str, msgspec.Meta(max_length=2000)] = ""
    description: Annotated[str, msgspec.Meta(max_length=2000)] = ""
    terms: Annotated[str, msgspec.Meta(max_length=2000)] = ""


class ProgrammeIn(msgspec.Struct, forbid_unknown_fields=True):
    issuer_id: int
    kind: str
    name: Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
    unit: Annotated[str, msgspec.Meta(pattern=r"^[A-Z]{3,8}$")] = "EUR"
    face_value_min_cents: Cents = 100
    face_value_max_cents: Cents = 50_000
    validity_months: int | None = 12
    valid_until: date | None = None
    partial_redemption: bool = True
    categories_allowed: list[Category] | None = None
    categories_excluded: list[Category] = []
    merchants_allowed: list[int] = []
    merchants_denied: list[int] = []
    second_language: str = "en"
    texts: dict[str, Texts] = {}
    purchase_fee_bp: int = 0


class ProgrammeChange(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """Only the fields sent are changed. Send validity_months or valid_until (the other becomes null)."""

    name: str | msgspec.UnsetType = msgspec.UNSET
    face_value_min_cents: Cents | msgspec.UnsetType = msgspec.UNSET
    face_value_max_cents: Cents | msgspec.UnsetType = msgspec.UNSET
    validity_months: int | msgspec.UnsetType = msgspec.UNSET
    valid_until: date | msgspec.UnsetType = msgspec.UNSET
    partial_redemption: bool | msgspec.UnsetType = msgspec.UNSET
    categories_allowed: list[Category] | None | msgspec.UnsetType = msgspec.UNSET
    categories_excluded: list[Category] | msgspec.UnsetType = msgspec.UNSET
    merchants_allowed: list[int] | msgspec.UnsetType = msgspec.UNSET
    merchants_denied: list[int] | msgspec.UnsetType = msgspec.UNSET
    second_language: str | msgspec.UnsetType = msgspec.UNSET
    texts: dict[str, Texts] | msgspec.UnsetType = msgspec.UNSET
    purchase_fee_bp: int | msgspec.UnsetType = msgspec.UNSET


class EmployerIn(msgspec.Struct, forbid_unknown_fields=True):
    issuer_id: int
    name: Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
    siret: Annotated[str, msgspec.Meta(max_length=30)]
    address: Annotated[str, msgspec.Meta(max_length=500)] = ""


class EmployerUserIn(msgspec.Struct, forbid_unknown_fields=True):
    email: Annotated[str, msgspec.Meta(min_length=3, max_length=254)]
    password: Annotated[str, msgspec.Meta(min_length=1, max_length=256)]
    display_name: Annotated[str, msgspec.Meta(max_length=200)] = ""


class LineBody(msgspec.Struct, forbid_unknown_fields=True):
    beneficiary_name: Annotated[str, msgspec.Meta(max_length=400)]
    amount_cents: int
    beneficiary_email: Annotated[str, msgspec.Meta(max_length=400)] | None = None


class OrderIn(msgspec.Struct, forbid_unknown_fields=True):
    programme_id: int
    event: str
    employer_id: int | None = None  # operators ordering for an employer say which
    event_label: Annotated[str, msgspec.Meta(max_length=400)] = ""
    message: Annotated[str, msgspec.Meta(max_length=1000)] = ""
    colour_primary: Annotated[str, msgspec.Meta(max_length=20)] = "#1F4E79"
    colour_secondary: Annotated[str, msgspec.Meta(max_length=20)] = "#F2C14E"
    lines: Annotated[list[LineBody], msgspec.Meta(max_length=20_000)] = []


class OrderChange(msgspec.Struct, forbid_unknown_fields=True):
    event: str | None = None
    event_label: Annotated[str, msgspec.Meta(max_length=400)] | None = None
    message: Annotated[str, msgspec.Meta(max_length=1000)] | None = None
    colour_primary: Annotated[str, msgspec.Meta(max_length=20)] | None = None
    colour_secondary: Annotated[str, msgspec.Meta(max_length=20)] | None = None


class PaymentIn(msgspec.Struct, forbid_unknown_fields=True):
    amount_cents: int
    reference: Annotated[str, msgspec.Meta(max_length=400)]


class ReasonIn(msgspec.Struct, forbid_unknown_fields=True):
    reason: Annotated[str, msgspec.Meta(max_length=1000)]


class ExtendIn(msgspec.Struct, forbid_unknown_fields=True):
    valid_until: date  # last valid day (Europe/Paris), inclusive


class BalanceIn(msgspec.Struct, forbid_unknown_fields=True):
    code: Annotated[str, msgspec.Meta(max_length=40)]


# --- answers ------------------------------------------------------------------------------

class ProgrammeAccountsOut(msgspec.Struct):
    float: int
    reserve: int
    bank: int
    breakage: int | None


class ProgrammeRulesOut(msgspec.Struct):
    """A programme as employers read it: its rules, none of the scheme's internal ledger ids."""

    id: int
    issuer_id: int
    kind: str
    name: str
    unit: str
    face_value_min_cents: int
    face_value_max_cents: int
    validity_months: int | None
    valid_until: date | None
    partial_redemption: bool
    categories_allowed: list[str] | None
    categories_excluded: list[str]
    merchants_allowed: list[int]
    merchants_denied: list[int]
    second_language: str
    texts: dict[str, dict[str, str]]
    purchase_fee_bp: int


class ProgrammeOut(ProgrammeRulesOut):
    """A programme as operators read it: its rules and its ledger accounts."""

    accounts: ProgrammeAccountsOut


class StatisticsOut(msgspec.Struct):
    programme_id: int
    unit: str
    sold_cents: int
    issued_count: int
    issued_cents: int
    redeemed_cents: int
    outstanding_count: int
    outstanding_cents: int
    expired_count: int
    expired_cents: int
    revoked_count: int


class EmployerOut(msgspec.Struct):
    id: int
    issuer_id: int
    name: str
    siret: str
    address: str


class EmployerUserOut(msgspec.Struct):
    id: int
    email: str
    role: str
    employer_id: int


class CeilingOut(msgspec.Struct):
    year: int
    per_beneficiary_per_event_cents: int


class WarningOut(msgspec.Struct):
    code: str
    beneficiary_name: str
    line_nos: list[int]
    amount_cents: int
    ceiling_cents: int
    message: str
    message_fr: str


class QuoteOut(msgspec.Struct):
    lines_count: int
    face_value_cents: int
    fee_bp: int
    fee_cents: int
    fee_vat_cents: int
    total_cents: int
    urssaf_ceiling: CeilingOut
    warnings: list[WarningOut]


class OrderOut(msgspec.Struct):
    id: int
    employer_id: int
    programme_id: int
    status: str
    event: str
    event_label: str
    message: str
    colour_primary: str
    colour_secondary: str
    logo: str | None  # the logo's media type, if there is one
    payment_reference: str | None
    payment_transfer_id: int | None
    issue_transfer_id: int | None
    created_at: datetime
    confirmed_at: datetime | None
    paid_at: datetime | None
    issued_at: datetime | None
    cancelled_at: datetime | None
    quote: QuoteOut


class LineOut(msgspec.Struct):
    line_no: int
    beneficiary_name: str
    beneficiary_email: str | None
    amount_cents: int


class VoucherOut(msgspec.Struct):
    id: int
    programme_id: int
    account_id: int
    code: str
    token: str
    key_id: str
    face_value_cents: int
    balance_cents: int
    beneficiary_name: str | None
    beneficiary_email: str | None
    employer_id: int | None
    order_id: int | None
    status: str
    issued_at: datetime
    expires_at: datetime
    replaced_by: int | None
    reissue_of: int | None
    page_path: str  # the holder's secret page


class RevokedOut(msgspec.Struct):
    revoked: VoucherOut
    replacement: VoucherOut | None


class ExpiryOut(msgspec.Struct):
    vouchers: int
    moved_cents: int
    transfer_ids: list[int]


class RotatedOut(msgspec.Struct):
    active_key_id: str


class PublicKeyOut(msgspec.Struct):
    key_id: str
    algorithm: str
    public_key: str  # raw 32-byte Ed25519 public key, hex
    created_at: datetime
    retired_at: datetime | None


class KeySetOut(msgspec.Struct):
    format: str
    keys: list[PublicKeyOut]


class ZipPendingOut(msgspec.Struct):
    status: str  # "rendering"
    retry_after_s: int


class BalanceOut(msgspec.Struct):
    balance_cents: int
    unit: str
    expires_at: datetime
    valid_until: date  # the last day it can be spent (Europe/Paris)
    status: str


# --- helpers --------------------------------------------------------------------------------

def _actor(user: AuthUser) -> str:
    return f"user:{user.id}:{user.role}"


async def _begin(conn: AsyncConnection, user: AuthUser) -> None:
    await set_actor(conn, _actor(user))


def _programme_out(rules: ProgrammeRules) -> ProgrammeOut:
    return ProgrammeOut(
        **msgspec.structs.asdict(_programme_rules_out(rules)),
        accounts=ProgrammeAccountsOut(rules.float_account_id, rules.reserve_account_id, rules.bank_account_id,
                                      rules.breakage_account_id),
    )


def _programme_rules_out(rules: ProgrammeRules) -> ProgrammeRulesOut:
    return ProgrammeRulesOut(
        id=rules.id, issuer_id=rules.issuer_id, kind=rules.kind, name=rules.name, unit=rules.unit,
        face_value_min_cents=rules.face_value_min_cents, face_value_max_cents=rules.face_value_max_cents,
        validity_months=rules.validity_months, valid_until=rules.valid_until,
        partial_redemption=rules.partial_redemption,
        categories_allowed=None if rules.categories_allowed is None else list(rules.categories_allowed),
        categories_excluded=list(rules.categories_excluded), merchants_allowed=list(rules.merchants_allowed),
        merchants_denied=list(rules.merchants_denied), second_language=rules.second_language, texts=rules.texts,
        purchase_fee_bp=rules.purchase_fee_bp,
    )


def _programme_for(user: AuthUser, rules: ProgrammeRules) -> ProgrammeOut | ProgrammeRulesOut:
    """Operators see a programme's ledger accounts; employers only what they need to order."""
    return _programme_out(rules) if user.role == Role.OPERATOR else _programme_rules_out(rules)


def _texts(texts: dict[str, Texts]) -> dict[str, dict[str, str]]:
    return {lang: {k: v for k, v in msgspec.structs.asdict(entry).items() if v} for lang, entry in texts.items()}


async def _employer_scope(conn: AsyncConnection, user: AuthUser) -> int | None:
    """None for an operator (every employer); the user's employer for an employer user."""
    if user.role == Role.OPERATOR:
        return None
    employer_id = await employer_domain.employer_of_user(conn, user.id)
    if employer_id is None:
        raise ApiError(403, "no_employer", "This user does not act for any employer yet.",
                       detail_fr="Cet utilisateur n'agit encore pour aucun employeur.")
    return employer_id


async def _order_for(conn: AsyncConnection, user: AuthUser, order_id: int, *, for_update: bool = False) -> order_domain.Order:
    order = await order_domain.get_order(conn, order_id, for_update=for_update)
    scope = await _employer_scope(conn, user)
    if scope is not None and order.employer_id != scope:
        # Not "forbidden": another employer's order numbers are none of this user's business.
        raise ApiError(404, "not_found", "No order has this id.", detail_fr="Aucune commande ne porte ce numéro.")
    return order


async def _order_out(conn: AsyncConnection, order: order_domain.Order) -> OrderOut:
    fixed = await order_domain.fixed_quote(conn, order)
    return OrderOut(
        id=order.id, employer_id=order.employer_id, programme_id=order.programme_id, status=order.status,
        event=order.event, event_label=order.event_label, message=order.message,
        colour_primary=order.colour_primary, colour_secondary=order.colour_secondary, logo=order.logo_media_type,
        payment_reference=order.payment_reference, payment_transfer_id=order.payment_transfer_id,
        issue_transfer_id=order.issue_transfer_id, created_at=order.created_at, confirmed_at=order.confirmed_at,
        paid_at=order.paid_at, issued_at=order.issued_at, cancelled_at=order.cancelled_at,
        quote=msgspec.convert(order_domain.quote_as_dict(fixed), QuoteOut),
    )


def _voucher_out(voucher: voucher_domain.Voucher, balance_cents: int) -> VoucherOut:
    return VoucherOut(
        id=voucher.id, programme_id=voucher.programme_id, account_id=voucher.account_id,
        code=format_code(voucher.code), token=voucher.token, key_id=voucher.key_id,
        face_value_cents=voucher.face_value_cents, balance_cents=balance_cents,
        beneficiary_name=voucher.beneficiary_name, beneficiary_email=voucher.beneficiary_email,
        employer_id=voucher.employer_id, order_id=voucher.order_id, status=voucher.status,
        issued_at=voucher.issued_at, expires_at=voucher.expires_at, replaced_by=voucher.replaced_by,
        reissue_of=voucher.reissue_of, page_path=f"{PAGE_PREFIX}{voucher.page_secret}",
    )


async def _lines_from_json(conn: AsyncConnection, order: order_domain.Order, lines: list[LineBody]):
    programme = await programme_domain.get_rules(conn, order.programme_id)
    return check_lines(
        ((index, line.beneficiary_name, line.beneficiary_email or "", line.amount_cents)
         for index, line in enumerate(lines, start=1)),
        min_cents=programme.face_value_min_cents, max_cents=programme.face_value_max_cents,
    )


def _raw_body(description: str, media_types: tuple[str, ...], max_bytes: int) -> type[Operation]:
    """An OpenAPI operation whose request body is a file sent as is: Litestar documents only the
    bodies it parses itself, and these handlers read the raw bytes (``request.body()``)."""
    body = RequestBody(required=True, description=f"{description} At most {max_bytes // 1024} KB.", content={
        media_type: OpenAPIMediaType(schema=Schema(type=OpenAPIType.STRING, format="binary", max_length=max_bytes))
        for media_type in media_types})

    @dataclasses.dataclass
    class RawBodyOperation(Operation):
        def __post_init__(self) -> None:
            self.request_body = body

    return RawBodyOperation


_CSV_BODY = _raw_body(
    "The order's lines as a spreadsheet export: UTF-8 or Windows-1252, separated by commas, semicolons "
    "or tabs; columns nom/name, montant/amount and optionally courriel/email (docs/vouchers.md).",
    ("text/csv",), CSV_BYTES_MAX)
_LOGO_BODY = _raw_body("The employer's logo, recognised by its content (not by the Content-Type).",
                       ("image/png", "image/jpeg", "image/svg+xml"), LOGO_BYTES_MAX)


def _attachment(content: bytes, media_type: str, filename: str) -> Response[bytes]:
    return Response(content, media_type=media_type,
                    headers={"Content-Disposition": f'attachment; filename="{filename}"'})


# --- operators: issuers, programmes, employers ---------------------------------------------

_OPERATOR = [requires(Role.OPERATOR)]
# Employers read the programmes they may order from; only operators change anything.
_READERS = [requires(Role.OPERATOR, Role.EMPLOYER)]


class ProgrammesController(Controller):
    path = "/"
    tags = ["vouchers: programmes"]

    @post("/issuers", status_code=201, guards=_OPERATOR)
    async def create_issuer(self, request: Request, data: JSONBody[IssuerIn], db_engine: NamedDependency[AsyncEngine]) -> IssuerOut:
        async with db_engine.begin() as conn:
            await _begin(conn, request.user)
            issuer_id = await programme_domain.create_issuer(conn, name=data.name, siren=data.siren, actor=_actor(request.user))
            siren = await conn.scalar(text("SELECT siren FROM issuers WHERE id = :id"), {"id": issuer_id})
        return IssuerOut(issuer_id, data.name.strip(), siren)

    @post("/programmes", status_code=201, guards=_OPERATOR)
    async def create_programme(self, request: Request, data: JSONBody[ProgrammeIn], db_engine: NamedDependency[AsyncEngine]) -> ProgrammeOut:
        rules = {f: getattr(data, f) for f in programme_domain.RULE_FIELDS}
        rules["texts"] = _texts(data.texts)
        async with db_engine.begin() as conn:
            await _begin(conn, request.user)
            created = await programme_domain.create_programme(
                conn, issuer_id=data.issuer_id, kind=data.kind, unit=data.unit, actor=_actor(request.user), **rules)
        return _programme_out(created)

    @get("/programmes", guards=_READERS)
    async def list_programmes(self, request: Request,
                              db_engine: NamedDependency[AsyncEngine]) -> list[ProgrammeOut | ProgrammeRulesOut]:
        """Operators get each programme's ledger accounts; employers the rules alone."""
        async with db_engine.connect() as conn:
            return [_programme_for(request.user, r) for r in await programme_domain.list_rules(conn)]

    @get("/programmes/{programme_id:int}", guards=_READERS)
    async def programme(self, request: Request, programme_id: FromPath[int],
                        db_engine: NamedDependency[AsyncEngine]) -> ProgrammeOut | ProgrammeRulesOut:
        """Operators get the programme's ledger accounts; employers the rules alone."""
        async with db_engine.connect() as conn:
            return _programme_for(request.user, await programme_domain.get_rules(conn, programme_id))

    @patch("/programmes/{programme_id:int}", guards=_OPERATOR)
    async def change_programme(self, request: Request, programme_id: FromPath[int], data: JSONBody[ProgrammeChange],
                               db_engine: NamedDependency[AsyncEngine]) -> ProgrammeOut:
        changes = {k: v for k, v in msgspec.structs.asdict(data).items() if v is not msgspec.UNSET}
        if "texts" in changes:
            changes["texts"] = _texts(changes["texts"])
        if "validity_months" in changes:
            changes.setdefault("valid_until", None)
        elif "valid_until" in changes:
            changes["validity_months"] = None
        async with db_engine.begin() as conn:
            await _begin(conn, request.user)
            changed = await programme_domain.update_programme(conn, programme_id, actor=_actor(request.user), **changes)
        return _programme_out(changed)

    @get("/programmes/{programme_id:int}/statistics", guards=_OPERATOR)
    async def statistics(self, programme_id: FromPath[int], db_engine: NamedDependency[AsyncEngine]) -> StatisticsOut:
        async with db_engine.connect() as conn:
            found = await voucher_domain.programme_statistics(conn, programme_id)
        return StatisticsOut(**dataclasses.asdict(found))

    @post("/employers", status_code=201, guards=_OPERATOR)
    async def create_employer(self, request: Request, data: JSONBody[EmployerIn], db_engine: NamedDependency[AsyncEngine]) -> EmployerOut:
        async with db_engine.begin() as conn:
            await _begin(conn, request.user)
            employer = await employer_domain.create_employer(
                conn, issuer_id=data.issuer_id, name=data.name, siret=data.siret, address=data.address,
                actor=_actor(request.user))
        return EmployerOut(employer.id, employer.issuer_id, employer.name, employer.siret, employer.address)

    @get("/employers", guards=_OPERATOR)
    async def list_employers(self, db_engine: NamedDependency[AsyncEngine]) -> list[EmployerOut]:
        async with db_engine.connect() as conn:
            return [EmployerOut(e.id, e.issuer_id, e.name, e.siret, e.address)
                    for e in await employer_domain.list_employers(conn)]

    @post("/employers/{employer_id:int}/users", status_code=201, guards=_OPERATOR)
    async def create_employer_user(self, request: Request, employer_id: FromPath[int], data: JSONBody[EmployerUserIn],
                                   db_engine: NamedDependency[AsyncEngine]) -> EmployerUserOut:
        async with db_engine.begin() as conn:
            await _begin(conn, request.user)
            employer = await employer_domain.get_employer(conn, employer_id)
            user_id = await create_user(conn, email=data.email, password=data.password, role=Role.EMPLOYER,
                                        display_name=data.display_name, issuer_id=employer.issuer_id)
            await employer_domain.attach_user(conn, user_id=user_id, employer_id=employer_id, actor=_actor(request.user))
        return EmployerUserOut(user_id, data.email.lower(), Role.EMPLOYER.value, employer_id)


# --- orders: employers (their own) and operators (all) ------------------------------------

class OrdersController(Controller):
    path = "/voucher-orders"
    tags = ["vouchers: orders"]
    guards = [requires(Role.EMPLOYER, Role.OPERATOR)]

    @post("/", status_code=201)
    async def create(self, request: Request, data: JSONBody[OrderIn], db_engine: NamedDependency[AsyncEngine]) -> OrderOut:
        async with db_engine.begin() as conn:
            await _begin(conn, request.user)
            scope = await _employer_scope(conn, request.user)
            employer_id = scope if scope is not None else data.employer_id
            if employer_id is None or (scope is not None and data.employer_id not in (None, scope)):
                raise ApiError(422, "employer_required", "Say which employer the order is for (employer_id).",
                               detail_fr="Indiquez pour quel employeur est la commande (employer_id).")
            order = await order_domain.create_order(
                conn, employer_id=employer_id, programme_id=data.programme_id, event=data.event,
                event_label=data.event_label, message=data.message, colour_primary=data.colour_primary,
                colour_secondary=data.colour_secondary, created_by=request.user.id, actor=_actor(request.user))
            if data.lines:
                lines = await _lines_from_json(conn, order, data.lines)
                await order_domain.replace_lines(conn, order.id, lines, actor=_actor(request.user))
            return await _order_out(conn, order)

    @get("/")
    async def list_orders(self, request: Request, db_engine: NamedDependency[AsyncEngine]) -> list[OrderOut]:
        async with db_engine.connect() as conn:
            scope = await _employer_scope(conn, request.user)
            return [await _order_out(conn, o) for o in await order_domain.list_orders(conn, employer_id=scope)]

    @get("/{order_id:int}")
    async def order(self, request: Request, order_id: FromPath[int], db_engine: NamedDependency[AsyncEngine]) -> OrderOut:
        async with db_engine.connect() as conn:
            return await _order_out(conn, await _order_for(conn, request.user, order_id))

    @patch("/{order_id:int}")
    async def change(self, request: Request, order_id: FromPath[int], data: JSONBody[OrderChange],
                     db_engine: NamedDependency[AsyncEngine]) -> OrderOut:
        async with db_engine.begin() as conn:
            await _begin(conn, request.user)
            await _order_for(conn, request.user, order_id)
            order = await order_domain.set_cobranding(
                conn, order_id, actor=_actor(request.user), message=data.message, colour_primary=data.colour_primary,
                colour_secondary=data.colour_secondary, event=data.event, event_label=data.event_label)
            return await _order_out(conn, order)

    @get("/{order_id:int}/lines")
    async def lines(self, request: Request, order_id: FromPath[int], db_engine: NamedDependency[AsyncEngine]) -> list[LineOut]:
        async with db_engine.connect() as conn:
            await _order_for(conn, request.user, order_id)
            return [LineOut(line.line_no, line.beneficiary_name, line.beneficiary_email, line.amount_cents)
                    for line in await order_domain.get_lines(conn, order_id)]

    @put("/{order_id:int}/lines")
    async def replace_lines(self, request: Request, order_id: FromPath[int], data: JSONBody[list[LineBody]],
                            db_engine: NamedDependency[AsyncEngine]) -> OrderOut:
        async with db_engine.begin() as conn:
            await _begin(conn, request.user)
            order = await _order_for(conn, request.user, order_id, for_update=True)
            lines = await _lines_from_json(conn, order, data)
            await order_domain.replace_lines(conn, order_id, lines, actor=_actor(request.user))
            return await _order_out(conn, order)

    @put("/{order_id:int}/lines.csv", operation_class=_CSV_BODY)
    async def upload_lines(self, request: Request, order_id: FromPath[int], db_engine: NamedDependency[AsyncEngine]) -> OrderOut:
        """Send the CSV as the raw request body (``Content-Type: text/csv``)."""
        body = await request.body()
        async with db_engine.begin() as conn:
            await _begin(conn, request.user)
            order = await _order_for(conn, request.user, order_id, for_update=True)
            programme = await programme_domain.get_rules(conn, order.programme_id)
            lines = parse_csv(body, min_cents=programme.face_value_min_cents, max_cents=programme.face_value_max_cents)
            await order_domain.replace_lines(conn, order_id, lines, actor=_actor(request.user))
            return await _order_out(conn, order)

    @put("/{order_id:int}/logo", operation_class=_LOGO_BODY)
    async def upload_logo(self, request: Request, order_id: FromPath[int], db_engine: NamedDependency[AsyncEngine]) -> OrderOut:
        """Send the PNG, JPEG or SVG file as the raw request body."""
        logo = check_logo(await request.body())
        async with db_engine.begin() as conn:
            await _begin(conn, request.user)
            await _order_for(conn, request.user, order_id)
            order = await order_domain.set_cobranding(conn, order_id, actor=_actor(request.user), logo=logo)
            return await _order_out(conn, order)

    @post("/{order_id:int}/confirm", status_code=200)
    async def confirm(self, request: Request, order_id: FromPath[int], db_engine: NamedDependency[AsyncEngine]) -> OrderOut:
        async with db_engine.begin() as conn:
            await _begin(conn, request.user)
            await _order_for(conn, request.user, order_id)
            order, _ = await order_domain.confirm(conn, order_id, actor=_actor(request.user))
            return await _order_out(conn, order)

    @post("/{order_id:int}/cancel", status_code=200)
    async def cancel(self, request: Request, order_id: FromPath[int], data: JSONBody[ReasonIn],
                     db_engine: NamedDependency[AsyncEngine]) -> OrderOut:
        async with db_engine.begin() as conn:
            await _begin(conn, request.user)
            await _order_for(conn, request.user, order_id)
            order = await order_domain.cancel(conn, order_id, reason=data.reason, actor=_actor(request.user))
            return await _order_out(conn, order)

    @post("/{order_id:int}/payment", status_code=200, guards=[requires(Role.OPERATOR)])
    async def record_payment(self, request: Request, order_id: FromPath[int], data: JSONBody[PaymentIn],
                             db_engine: NamedDependency[AsyncEngine]) -> OrderOut:
        """The operator records the bank transfer; the vouchers are issued at once."""
        async with db_engine.begin() as conn:
            await _begin(conn, request.user)
            await order_domain.record_payment(conn, order_id, amount_cents=data.amount_cents, reference=data.reference,
                                              actor=_actor(request.user))
        return await _issue_order(db_engine, request.user, order_id)

    @post("/{order_id:int}/issue", status_code=200, guards=[requires(Role.OPERATOR)])
    async def issue(self, request: Request, order_id: FromPath[int], db_engine: NamedDependency[AsyncEngine]) -> OrderOut:
        """Issue a paid order (done by the payment itself; here to retry should that have failed)."""
        return await _issue_order(db_engine, request.user, order_id)

    @get("/{order_id:int}/vouchers")
    async def vouchers(self, request: Request, order_id: FromPath[int], db_engine: NamedDependency[AsyncEngine]) -> list[VoucherOut]:
        async with db_engine.connect() as conn:
            await _order_for(conn, request.user, order_id)
            found = await voucher_domain.vouchers_of_order(conn, order_id)
            balances = await voucher_domain.balances(conn, found)
        return [_voucher_out(v, balances[v.account_id]) for v in found]

    @get("/{order_id:int}/vouchers.pdf")
    async def order_pdf(self, request: Request, order_id: FromPath[int], db_engine: NamedDependency[AsyncEngine]) -> Response[bytes]:
        async with db_engine.connect() as conn:
            await _order_for(conn, request.user, order_id)
            batch = await voucher_print.load_order_batch(conn, order_id)
        content = await asyncio.to_thread(voucher_print.order_pdf, batch)
        return _attachment(content, "application/pdf", f"order-{order_id}-vouchers.pdf")

    @get("/{order_id:int}/vouchers.zip", media_type="application/zip", responses={
        202: ResponseSpec(ZipPendingOut, description="Being rendered: ask again after Retry-After seconds.")})
    async def order_zip(self, request: Request, order_id: FromPath[int], db_engine: NamedDependency[AsyncEngine]) -> Response:
        """Every voucher's PDF, the whole order's PDF and a CSV of codes. Rendered once, off the
        request (docs/vouchers.md): 202 with Retry-After until it is ready, then the file."""
        async with db_engine.connect() as conn:
            await _order_for(conn, request.user, order_id)
        path, wait_s = await voucher_print.rendered_zip(db_engine, order_id)
        try:
            # Opened now: should a newer rendering replace the file, this download still completes.
            handle = path.open("rb") if path is not None else None
        except FileNotFoundError:
            handle, wait_s = None, 1  # just replaced by a newer rendering: it is there now
        if handle is None:
            return Response(ZipPendingOut("rendering", wait_s), status_code=202, media_type="application/json",
                            headers={"Retry-After": str(wait_s)})
        return Stream(_chunks(handle), media_type="application/zip", headers={
            "Content-Disposition": f'attachment; filename="order-{order_id}-vouchers.zip"',
            "Content-Length": str(os.fstat(handle.fileno()).st_size)})


async def _chunks(handle: BinaryIO, size: int = 1 << 20) -> AsyncIterator[bytes]:
    with handle:
        while chunk := await asyncio.to_thread(handle.read, size):
            yield chunk


async def _issue_order(db_engine: AsyncEngine, user: AuthUser, order_id: int) -> OrderOut:
    async with db_engine.begin() as conn:
        await _begin(conn, user)
        order, _ = await order_domain.issue(conn, order_id, actor=_actor(user))
        issued = await _order_out(conn, order)
    voucher_print.start_rendering(db_engine, order_id)  # the employer's ZIP, ready by the time it is asked for
    return issued


# --- vouchers: operators (lifecycle), holders (their own page) ------------------------------

class VouchersController(Controller):
    path = "/vouchers"
    tags = ["vouchers"]
    guards = [requires(Role.OPERATOR, Role.EMPLOYER)]

    async def _voucher_for(self, conn: AsyncConnection, user: AuthUser, voucher_id: int) -> voucher_domain.Voucher:
        voucher = await voucher_domain.get_voucher(conn, voucher_id)
        scope = await _employer_scope(conn, user)
        if scope is not None and voucher.employer_id != scope:
            raise ApiError(404, "not_found", "No voucher has this id.", detail_fr="Aucun titre ne porte ce numéro.")
        return voucher

    @get("/{voucher_id:int}")
    async def voucher(self, request: Request, voucher_id: FromPath[int], db_engine: NamedDependency[AsyncEngine]) -> VoucherOut:
        async with db_engine.connect() as conn:
            voucher = await self._voucher_for(conn, request.user, voucher_id)
            return _voucher_out(voucher, (await voucher_domain.balances(conn, [voucher]))[voucher.account_id])

    @get("/{voucher_id:int}/qr.png")
    async def qr(self, request: Request, voucher_id: FromPath[int], db_engine: NamedDependency[AsyncEngine]) -> Response[bytes]:
        async with db_engine.connect() as conn:
            voucher = await self._voucher_for(conn, request.user, voucher_id)
        return Response(voucher_print.qr_png(voucher.token), media_type="image/png")

    @get("/{voucher_id:int}/voucher.pdf")
    async def pdf(self, request: Request, voucher_id: FromPath[int], db_engine: NamedDependency[AsyncEngine]) -> Response[bytes]:
        async with db_engine.connect() as conn:
            voucher = await self._voucher_for(conn, request.user, voucher_id)
            batch = await voucher_print.load_batch(conn, [voucher])
        content = await asyncio.to_thread(voucher_print.voucher_pdf, batch, batch.vouchers[0])
        return _attachment(content, "application/pdf", f"voucher-{voucher.code}.pdf")

    @post("/{voucher_id:int}/revoke", status_code=200, guards=[requires(Role.OPERATOR)])
    async def revoke(self, request: Request, voucher_id: FromPath[int], data: JSONBody[ReasonIn],
                     db_engine: NamedDependency[AsyncEngine]) -> RevokedOut:
        """Revoke a lost voucher; what is left on it moves to a new voucher (new code, new token)."""
        async with db_engine.begin() as conn:
            await _begin(conn, request.user)
            old, new = await voucher_domain.revoke_and_reissue(conn, voucher_id, reason=data.reason, actor=_actor(request.user))
            balances = await voucher_domain.balances(conn, [old] + ([new] if new else []))
        return RevokedOut(_voucher_out(old, balances[old.account_id]),
                          _voucher_out(new, balances[new.account_id]) if new else None)

    @post("/{voucher_id:int}/extend", status_code=200, guards=[requires(Role.OPERATOR)])
    async def extend(self, request: Request, voucher_id: FromPath[int], data: JSONBody[ExtendIn],
                     db_engine: NamedDependency[AsyncEngine]) -> VoucherOut:
        expires_at = datetime.combine(data.valid_until + timedelta(days=1), clock_time(), PARIS).astimezone(timezone.utc)
        async with db_engine.begin() as conn:
            await _begin(conn, request.user)
            voucher = await voucher_domain.extend_validity(conn, voucher_id, expires_at=expires_at, actor=_actor(request.user))
            return _voucher_out(voucher, (await voucher_domain.balances(conn, [voucher]))[voucher.account_id])

    @post("/expire", status_code=200, guards=[requires(Role.OPERATOR)])
    async def expire(self, request: Request, db_engine: NamedDependency[AsyncEngine]) -> ExpiryOut:
        """Run the expiry now (the serve job does it every few minutes)."""
        async with db_engine.begin() as conn:
            await _begin(conn, request.user)
            run = await voucher_domain.expire_due(conn, actor=_actor(request.user))
        return ExpiryOut(run.vouchers, run.moved_cents, list(run.transfer_ids))

    @post("/keys/rotate", status_code=200, guards=[requires(Role.OPERATOR)])
    async def rotate_key(self, request: Request, db_engine: NamedDependency[AsyncEngine]) -> RotatedOut:
        async with db_engine.begin() as conn:
            await _begin(conn, request.user)
            key = await voucher_domain.rotate_key(conn, actor=_actor(request.user))
        return RotatedOut(key.key_id)


# --- public: key set, balance enquiry, digital voucher page --------------------------------

@get(KEYS_PATH, exclude_from_auth=True, tags=["vouchers"])
async def voucher_keys(db_engine: NamedDependency[AsyncEngine]) -> KeySetOut:
    """Every key that ever signed voucher tokens: enough to verify a token offline (docs/tokens.md)."""
    async with db_engine.begin() as conn:
        await voucher_domain.active_key(conn)  # a fresh scheme publishes its key before its first voucher
        keys = await voucher_domain.key_set(conn)
    return KeySetOut("CV1", [PublicKeyOut(k.key_id, "ed25519", k.public_key.hex(), k.created_at, k.retired_at)
                             for k in keys])


@post(BALANCE_PATH, exclude_from_auth=True, status_code=200, tags=["vouchers"])
async def balance_enquiry(request: Request, data: JSONBody[BalanceIn], db_engine: NamedDependency[AsyncEngine]) -> BalanceOut:
    """What is left on a voucher and until when: nothing else (not who holds it, not where it was spent)."""
    # Counted in the database (api/throttle.py): the limit holds across workers and processes.
    await hit(db_engine, f"{BALANCE_KEY_PREFIX}{client_ip(request)}", limit=BALANCE_REQUESTS_PER_MINUTE, window_s=60)
    async with db_engine.connect() as conn:
        found = await voucher_domain.balance_enquiry(conn, data.code)
    return BalanceOut(found.balance_cents, found.unit, found.expires_at,
                      (found.expires_at.astimezone(PARIS) - timedelta(seconds=1)).date(), found.status)


@get(PAGE_PREFIX + "{secret:str}", exclude_from_auth=True, tags=["vouchers"], media_type="text/html")
async def voucher_page(secret: FromPath[str], db_engine: NamedDependency[AsyncEngine]) -> Response[str]:
    """The holder's digital voucher, reachable only by its secret link."""
    async with db_engine.connect() as conn:
        voucher = await voucher_domain.voucher_for_page(conn, secret)
        page = await voucher_print.load_page(conn, voucher)
    return Response(voucher_print.voucher_html(page), media_type="text/html",
                    headers={"Cache-Control": "no-store", "Referrer-Policy": "no-referrer",
                             "X-Robots-Tag": "noindex"})


@get(PAGE_PREFIX + "{secret:str}/qr.png", exclude_from_auth=True, tags=["vouchers"])
async def voucher_page_qr(secret: FromPath[str], db_engine: NamedDependency[AsyncEngine]) -> Response[bytes]:
    async with db_engine.connect() as conn:
        voucher = await voucher_domain.voucher_for_page(conn, secret)
    return Response(voucher_print.qr_png(voucher.token), media_type="image/png", headers={"Cache-Control": "no-store"})


# --- the bank's payment webhook ---------------------------------------------------------------

PAYMENTS_WEBHOOK_PATH = "/webhooks/voucher-payments"
WEBHOOK_SECRET_ENV = "CIRCUIT_PAYMENT_WEBHOOK_SECRET"
WEBHOOK_TOLERANCE_SECONDS = 300


class WebhookPaymentIn(msgspec.Struct, forbid_unknown_fields=True):
    order_id: int
    amount_cents: int
    reference: Annotated[str, msgspec.Meta(max_length=140)]


def _check_webhook_signature(request: Request, body: bytes) -> None:
    """``X-Circuit-Signature: sha256=<hex>`` is HMAC-SHA256 with the shared secret over
    ``<X-Circuit-Timestamp>.<raw body>``; a timestamp more than five minutes off is a replay."""
    secret = os.environ.get(WEBHOOK_SECRET_ENV, "")
    if not secret:
        raise ApiError(404, "not_found", "No payment webhook is configured here.",
                       detail_fr="Aucun webhook de paiement n'est configuré ici.")
    stamp = request.headers.get("x-circuit-timestamp", "")
    given = request.headers.get("x-circuit-signature", "").removeprefix("sha256=")
    expected = hmac.new(secret.encode(), stamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    fresh = stamp.isdigit() and abs(time.time() - int(stamp)) <= WEBHOOK_TOLERANCE_SECONDS
    if not (fresh and hmac.compare_digest(given, expected)):
        raise ApiError(401, "bad_webhook_signature", "The webhook's signature or timestamp is not valid.",
                       detail_fr="La signature ou l'horodatage du webhook n'est pas valide.")


@post(PAYMENTS_WEBHOOK_PATH, exclude_from_auth=True, status_code=200, tags=["vouchers: orders"])
async def payment_webhook(request: Request, db_engine: NamedDependency[AsyncEngine]) -> OrderOut:
    """The bank (or a payment provider) reports the transfer for a confirmed order: the order is
    paid and issued, as when an operator records it. Delivering the same payment again is harmless."""
    body = await request.body()
    _check_webhook_signature(request, body)
    try:
        payment = msgspec.json.decode(body, type=WebhookPaymentIn)
    except msgspec.ValidationError as error:
        raise ApiError(400, "invalid_request", f"The payment notice is malformed: {error}",
                       detail_fr="L'avis de paiement est mal formé.") from None
    async with db_engine.begin() as conn:
        await set_actor(conn, "webhook:payments")
        order = await order_domain.get_order(conn, payment.order_id, for_update=True)
        # The same notice delivered again: nothing to book twice; finish the issue if it had failed.
        again = order.payment_reference == payment.reference.strip()
        if again and order.status == "issued":
            return await _order_out(conn, order)
        if not (again and order.status == "paid"):
            await order_domain.record_payment(conn, payment.order_id, amount_cents=payment.amount_cents,
                                              reference=payment.reference, actor="webhook:payments")
    async with db_engine.begin() as conn:
        await set_actor(conn, "webhook:payments")
        order, _ = await order_domain.issue(conn, payment.order_id, actor="webhook:payments")
        issued = await _order_out(conn, order)
    voucher_print.start_rendering(db_engine, payment.order_id)
    return issued
