"""Onboarding over HTTP: a shop applies (public form), the issuer's operator reviews.

The application also creates the shop owner's user (role ``merchant_owner``), so the owner
can sign in on the phone app at once and see the review's progress; nothing can be taken
until the operator approves.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

import msgspec
from litestar import Controller, Request, get, post
from litestar.di import NamedDependency
from litestar.params import FromPath, FromQuery, JSONBody
from sqlalchemy.ext.asyncio import AsyncEngine

from api.auth import AuthUser, Role, create_user, requires
from ledger import merchants
from api.throttle import client_ip, hit

APPLICATIONS_PER_IP_PER_HOUR = 20

Reason = Annotated[str, msgspec.Meta(min_length=1, max_length=merchants.REASON_LENGTH_MAX)]


class OwnerIn(msgspec.Struct, forbid_unknown_fields=True):
    email: Annotated[str, msgspec.Meta(min_length=3, max_length=254)]
    password: Annotated[str, msgspec.Meta(min_length=1, max_length=256)]
    display_name: Annotated[str, msgspec.Meta(max_length=200)] = ""


class ApplicationIn(msgspec.Struct, forbid_unknown_fields=True):
    issuer_id: Annotated[int, msgspec.Meta(gt=0)]
    legal_name: Annotated[str, msgspec.Meta(max_length=merchants.NAME_LENGTH_MAX)]
    trade_name: Annotated[str, msgspec.Meta(max_length=merchants.NAME_LENGTH_MAX)]
    siret: Annotated[str, msgspec.Meta(max_length=20)]
    iban: Annotated[str, msgspec.Meta(max_length=50)]
    category: Annotated[str, msgspec.Meta(max_length=40)]
    naf_code: Annotated[str, msgspec.Meta(max_length=10)]
    address_line: Annotated[str, msgspec.Meta(max_length=merchants.ADDRESS_LENGTH_MAX)]
    postcode: Annotated[str, msgspec.Meta(max_length=10)]
    commune: Annotated[str, msgspec.Meta(max_length=merchants.COMMUNE_LENGTH_MAX)]
    email: Annotated[str, msgspec.Meta(max_length=254)]
    phone: Annotated[str, msgspec.Meta(max_length=30)]
    programme_ids: Annotated[list[int], msgspec.Meta(max_length=merchants.PROGRAMMES_WANTED_MAX)]
    owner: OwnerIn
    bic: Annotated[str, msgspec.Meta(max_length=11)] | None = None
    commune_insee: Annotated[str, msgspec.Meta(max_length=5)] | None = None


class ProgrammeStatusOut(msgspec.Struct):
    programme_id: int
    name: str
    unit: str
    status: str
    reason: str | None


class MerchantOut(msgspec.Struct):
    id: int
    issuer_id: int
    legal_name: str
    trade_name: str
    status: str
    status_reason: str | None
    siret: str | None
    iban: str | None
    bic: str | None
    category: str | None
    naf_code: str | None
    address_line: str | None
    postcode: str | None
    commune: str | None
    commune_insee: str | None
    email: str | None
    phone: str | None
    is_counter: bool
    created_at: datetime
    reviewed_at: datetime | None
    programmes: list[ProgrammeStatusOut]


class CategoryIn(msgspec.Struct, forbid_unknown_fields=True):
    code: Annotated[str, msgspec.Meta(pattern=r"^[a-z][a-z0-9_]{1,39}$")]
    label_fr: Annotated[str, msgspec.Meta(min_length=1, max_length=merchants.CATEGORY_LABEL_LENGTH_MAX)]
    label_en: Annotated[str, msgspec.Meta(min_length=1, max_length=merchants.CATEGORY_LABEL_LENGTH_MAX)]


class CategoryOut(msgspec.Struct):
    code: str
    label_fr: str
    label_en: str


class ApproveIn(msgspec.Struct, forbid_unknown_fields=True):
    programme_ids: Annotated[list[int], msgspec.Meta(min_length=1, max_length=merchants.PROGRAMMES_WANTED_MAX)]


class ApprovedOut(msgspec.Struct):
    merchant: MerchantOut
    accounts: dict[str, int]  # programme id -> the merchant's ledger account for it


class ReasonIn(msgspec.Struct, forbid_unknown_fields=True):
    reason: Reason


class OptionalReasonIn(msgspec.Struct, forbid_unknown_fields=True):
    reason: Reason | None = None


def merchant_out(merchant: merchants.Merchant) -> MerchantOut:
    fields = {name: getattr(merchant, name) for name in MerchantOut.__struct_fields__ if name != "programmes"}
    return MerchantOut(**fields, programmes=[
        ProgrammeStatusOut(p.programme_id, p.name, p.unit, p.status, p.reason) for p in merchant.programmes
    ])


def actor_of(user: AuthUser) -> str:
    return f"user:{user.id}"


class ApplicationController(Controller):
    """What a shop sees before it has an account: the categories, the application form."""

    path = "/merchant-applications"
    tags = ["merchants"]

    @get("/categories", exclude_from_auth=True)
    async def categories(self, issuer_id: FromQuery[int], db_engine: NamedDependency[AsyncEngine]) -> list[CategoryOut]:
        async with db_engine.connect() as conn:
            found = await merchants.list_categories(conn, issuer_id)
        return [CategoryOut(c.code, c.label_fr, c.label_en) for c in found]

    @post("/", exclude_from_auth=True, status_code=201)
    async def apply(self, data: JSONBody[ApplicationIn], request: Request, db_engine: NamedDependency[AsyncEngine]) -> MerchantOut:
        await hit(db_engine, f"apply:ip:{client_ip(request)}", limit=APPLICATIONS_PER_IP_PER_HOUR, window_s=3600)
        fields = msgspec.structs.asdict(data)
        owner = fields.pop("owner")
        fields["programme_ids"] = tuple(fields["programme_ids"])
        async with db_engine.begin() as conn:
            merchant_id = await merchants.apply(conn, merchants.Application(**fields), actor=f"applicant:{owner.email.lower()}")
            await create_user(
                conn, email=owner.email, password=owner.password, role=Role.MERCHANT_OWNER,
                display_name=owner.display_name, issuer_id=data.issuer_id, merchant_id=merchant_id,
            )
            return merchant_out(await merchants.get_merchant(conn, merchant_id))


class MerchantReviewController(Controller):
    """The issuer's operator: the list of shops, their review, the category list."""

    path = "/merchants"
    tags = ["merchants"]
    guards = [requires(Role.OPERATOR)]

    @get("/")
    async def list_merchants(
        self, db_engine: NamedDependency[AsyncEngine], status: FromQuery[str | None] = None,
        issuer_id: FromQuery[int | None] = None, after_id: FromQuery[int] = 0,
        limit: FromQuery[Annotated[int, msgspec.Meta(ge=1, le=500)]] = 100,
    ) -> list[MerchantOut]:
        async with db_engine.connect() as conn:
            found = await merchants.list_merchants(conn, issuer_id=issuer_id, status=status, limit=limit, after_id=after_id)
        return [merchant_out(m) for m in found]

    @get("/{merchant_id:int}")
    async def get(self, merchant_id: FromPath[int], db_engine: NamedDependency[AsyncEngine]) -> MerchantOut:
        async with db_engine.connect() as conn:
            return merchant_out(await merchants.get_merchant(conn, merchant_id))

    @post("/{merchant_id:int}/approve", status_code=200)
    async def approve(
        self, merchant_id: FromPath[int], data: JSONBody[ApproveIn], request: Request[AuthUser, str, object],
        db_engine: NamedDependency[AsyncEngine],
    ) -> ApprovedOut:
        async with db_engine.begin() as conn:
            accounts = await merchants.approve(conn, merchant_id, data.programme_ids, actor=actor_of(request.user))
            merchant = await merchants.get_merchant(conn, merchant_id)
        return ApprovedOut(merchant_out(merchant), {str(k): v for k, v in accounts.items()})

    @post("/{merchant_id:int}/programmes/{programme_id:int}/refuse", status_code=200)
    async def refuse_programme(
        self, merchant_id: FromPath[int], programme_id: FromPath[int], data: JSONBody[ReasonIn],
        request: Request[AuthUser, str, object], db_engine: NamedDependency[AsyncEngine],
    ) -> MerchantOut:
        async with db_engine.begin() as conn:
            await merchants.refuse_programme(conn, merchant_id, programme_id, reason=data.reason, actor=actor_of(request.user))
            return merchant_out(await merchants.get_merchant(conn, merchant_id))

    @post("/{merchant_id:int}/reject", status_code=200)
    async def reject(
        self, merchant_id: FromPath[int], data: JSONBody[ReasonIn], request: Request[AuthUser, str, object],
        db_engine: NamedDependency[AsyncEngine],
    ) -> MerchantOut:
        async with db_engine.begin() as conn:
            await merchants.reject(conn, merchant_id, reason=data.reason, actor=actor_of(request.user))
            return merchant_out(await merchants.get_merchant(conn, merchant_id))

    @post("/{merchant_id:int}/suspend", status_code=200)
    async def suspend(
        self, merchant_id: FromPath[int], data: JSONBody[ReasonIn], request: Request[AuthUser, str, object],
        db_engine: NamedDependency[AsyncEngine],
    ) -> MerchantOut:
        async with db_engine.begin() as conn:
            await merchants.suspend(conn, merchant_id, reason=data.reason, actor=actor_of(request.user))
            return merchant_out(await merchants.get_merchant(conn, merchant_id))

    @post("/{merchant_id:int}/reinstate", status_code=200)
    async def reinstate(
        self, merchant_id: FromPath[int], data: JSONBody[OptionalReasonIn], request: Request[AuthUser, str, object],
        db_engine: NamedDependency[AsyncEngine],
    ) -> MerchantOut:
        async with db_engine.begin() as conn:
            await merchants.reinstate(conn, merchant_id, reason=data.reason, actor=actor_of(request.user))
            return merchant_out(await merchants.get_merchant(conn, merchant_id))

    @post("/categories", status_code=201)
    async def set_category(
        self, data: JSONBody[CategoryIn], request: Request[AuthUser, str, object], db_engine: NamedDependency[AsyncEngine],
        issuer_id: FromQuery[int],
    ) -> CategoryOut:
        async with db_engine.begin() as conn:
            category = await merchants.add_category(
                conn, issuer_id=issuer_id, code=data.code, label_fr=data.label_fr, label_en=data.label_en,
                actor=actor_of(request.user),
            )
        return CategoryOut(category.code, category.label_fr, category.label_en)
