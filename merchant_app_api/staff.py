"""Shop staff on phones: who is signed in, TOTP enrolment, staff accounts, device sessions.

Owners and cashiers sign in at ``/auth/login`` (password, then the TOTP code once they
have one; repeated failures lock the email for a while, see ``api/throttle.py``). An owner
must enrol a TOTP second factor before anything else: until then only ``/merchant/me`` and
the enrolment endpoints answer. The owner lists and revokes the shop's device sessions.
"""

from __future__ import annotations

import base64
import io
import os
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Annotated, Any

import msgspec
import pyotp
import qrcode
from litestar import Controller, Request, Response, get, post
from litestar.di import NamedDependency, Provide
from litestar.params import FromPath, JSONBody
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from api.auth import VALID_SESSION, AuthUser, Role, create_user, unknown_token
from api.errors import ApiError
from api.throttle import HIT_STATEMENT, HIT_UPSERT, check_hits
from audit.chain import append
from ledger import merchants

TOTP_ISSUER = "Circuit"
STAFF_MAX = 50
SCANS_PER_SESSION_PER_MINUTE = int(os.environ.get("CIRCUIT_SCANS_PER_MINUTE", "120"))

_MERCHANT_ROLES = (Role.MERCHANT_OWNER.value, Role.MERCHANT_CASHIER.value)


@dataclass(frozen=True, slots=True)
class Staff:
    """A signed-in member of a shop's staff, with what every request needs to know."""

    user_id: int
    email: str
    role: str
    merchant_id: int
    merchant_status: str
    totp_enrolled: bool
    session_id: int

    @property
    def is_owner(self) -> bool:
        return self.role == Role.MERCHANT_OWNER

    @property
    def actor(self) -> str:
        return f"user:{self.user_id}"

    def check_can_act(self) -> None:
        merchants.check_can_act(self.merchant_status)

    def check_owner(self) -> None:
        if not self.is_owner:
            raise ApiError(403, "owner_only", "Only the shop's owner can do this.",
                           detail_fr="Seul le responsable du commerce peut faire cela.")


_STAFF_SQL = text(
    """
    SELECT u.id, u.email, u.role, u.merchant_id, m.status, u.totp_secret IS NOT NULL, s.id
    FROM users u JOIN merchants m ON m.id = u.merchant_id JOIN sessions s ON s.token_hash = :hash
    WHERE u.id = :user_id
    """
)


# The same, and one scan counted against the device session's rate limit, in one statement.
_SCANNING_STAFF_SQL = text(
    f"""
    WITH hit AS ({HIT_STATEMENT})
    SELECT u.id, u.email, u.role, u.merchant_id, m.status, u.totp_secret IS NOT NULL, s.id, hit.hits, hit.left_s
    FROM users u JOIN merchants m ON m.id = u.merchant_id JOIN sessions s ON s.token_hash = :hash, hit
    WHERE u.id = :user_id
    """
)


# For the till's redeem, which checks its tokens itself (``exclude_from_auth``) and reads more
# in the same statement, for a batch of requests: ``item`` is one row per request (``n`` its
# place, ``hash`` its token's hash, ``limit_key`` its device's scan limit key). ``staff`` is
# each token's staff member (the middleware's conditions); ``hit`` counts each request of a
# shop's staff against its device's limit inside the batch's transaction: one upsert per
# device, of as many scans as it sent, each request reading the count as it stood after its
# own scan (``scanning.later``: the device's requests after it in the batch). Select
# SCANNING_STAFF_COLUMNS first, from ``item`` and SCANNING_STAFF_JOINS, then read them with
# scanning_staff().
SCANNING_STAFF_CTE = f"""
    staff AS (
        SELECT i.n, u.id, u.email, u.role, u.merchant_id, m.status, u.totp_secret IS NOT NULL AS totp_enrolled,
               s.id AS session_id
        FROM item i JOIN sessions s ON s.token_hash = i.hash JOIN users u ON u.id = s.user_id
        LEFT JOIN merchants m ON m.id = u.merchant_id
        WHERE {VALID_SESSION.replace(":hash", "i.hash")}),
    scanning AS (
        SELECT i.n, i.limit_key, count(*) OVER (PARTITION BY i.limit_key ORDER BY i.n
                                                ROWS BETWEEN 1 FOLLOWING AND UNBOUNDED FOLLOWING) AS later
        FROM item i JOIN staff ON staff.n = i.n
        WHERE staff.role IN ('merchant_owner', 'merchant_cashier') AND staff.merchant_id IS NOT NULL),
    hit AS ({HIT_UPSERT.replace("{key}", "limit_key").replace("{hits}", "count(*)")
             .replace("{source}", "scanning GROUP BY limit_key ORDER BY limit_key")})
"""
SCANNING_STAFF_JOINS = """
    LEFT JOIN staff ON staff.n = item.n LEFT JOIN scanning ON scanning.n = item.n
    LEFT JOIN hit ON hit.key = scanning.limit_key
"""
SCANNING_STAFF_COLUMNS = (
    "staff.id AS staff_user_id, staff.email AS staff_email, staff.role AS staff_role, "
    "staff.merchant_id AS staff_merchant_id, staff.status AS staff_merchant_status, "
    "staff.totp_enrolled AS staff_totp_enrolled, staff.session_id AS staff_session_id, "
    "hit.hits - scanning.later AS hits, hit.left_s"
)
SCANNING_STAFF_WIDTH = 9


def scan_limit_key(token_hash: bytes) -> str:
    return f"scan:session:{token_hash.hex()[:32]}"


def scanning_staff(row: Sequence[Any] | None) -> Staff:
    """The staff member of a row starting with SCANNING_STAFF_COLUMNS (None or NULLs: no such
    token), refused in the order the middleware and provide_scanning_staff() refuse."""
    if row is None or row[0] is None:
        raise unknown_token()
    if row[2] not in _MERCHANT_ROLES or row[3] is None:
        raise ApiError(403, "forbidden", "This is for a shop's staff.", detail_fr="Réservé au personnel d'un commerce.")
    check_hits(row[7], row[8], SCANS_PER_SESSION_PER_MINUTE)
    return _enrolled(Staff(*row[:7]))


async def _load(request: Request[AuthUser, str, object], engine: AsyncEngine, *, scan: bool = False) -> Staff:
    user = request.user
    if user.role not in _MERCHANT_ROLES or user.merchant_id is None:
        raise ApiError(403, "forbidden", "This is for a shop's staff.", detail_fr="Réservé au personnel d'un commerce.")
    params = {"hash": user.session_hash, "user_id": user.id}
    async with engine.connect() as conn:
        # A single statement on every request: no BEGIN and ROLLBACK round trips around it.
        autocommit = await conn.execution_options(isolation_level="AUTOCOMMIT")
        if not scan:
            return Staff(*(await autocommit.execute(_STAFF_SQL, params)).one())
        row = (await autocommit.execute(_SCANNING_STAFF_SQL, {
            **params, "key": scan_limit_key(user.session_hash), "window_s": 60})).one()
    check_hits(row.hits, row.left_s, SCANS_PER_SESSION_PER_MINUTE)
    return Staff(*row[:7])


def _enrolled(staff: Staff) -> Staff:
    if staff.is_owner and not staff.totp_enrolled:
        raise ApiError(403, "totp_setup_required",
                       "Set up your second factor (authenticator app) before using the shop's account.",
                       detail_fr="Configurez d'abord votre second facteur (application d'authentification).")
    return staff


async def provide_staff_enrolling(request: Request[AuthUser, str, object], db_engine: NamedDependency[AsyncEngine]) -> Staff:
    """The staff member, even an owner who has not enrolled a second factor yet."""
    return await _load(request, db_engine)


async def provide_staff(request: Request[AuthUser, str, object], db_engine: NamedDependency[AsyncEngine]) -> Staff:
    """The staff member; an owner without a second factor is sent to enrol one first."""
    return _enrolled(await _load(request, db_engine))


async def provide_scanning_staff(request: Request[AuthUser, str, object], db_engine: NamedDependency[AsyncEngine]) -> Staff:
    """The staff member, with one scan counted against the device's limit (preview, redeem)."""
    return _enrolled(await _load(request, db_engine, scan=True))


class MeOut(msgspec.Struct):
    user_id: int
    email: str
    role: str
    merchant_id: int
    merchant_status: str
    trade_name: str
    totp_enrolled: bool
    totp_required: bool
    programmes: list[dict]


class TotpSetupIn(msgspec.Struct, forbid_unknown_fields=True):
    current_code: Annotated[str, msgspec.Meta(pattern=r"^[0-9]{6}$")] | None = None


class TotpSetupOut(msgspec.Struct):
    secret: str
    provisioning_uri: str
    qr_png_data_uri: str


class TotpConfirmIn(msgspec.Struct, forbid_unknown_fields=True):
    code: Annotated[str, msgspec.Meta(pattern=r"^[0-9]{6}$")]


class StaffIn(msgspec.Struct, forbid_unknown_fields=True):
    email: Annotated[str, msgspec.Meta(min_length=3, max_length=254)]
    password: Annotated[str, msgspec.Meta(min_length=1, max_length=256)]
    role: Annotated[str, msgspec.Meta(pattern=r"^(cashier|owner)$")] = "cashier"
    display_name: Annotated[str, msgspec.Meta(max_length=200)] = ""


class StaffOut(msgspec.Struct):
    user_id: int
    email: str
    display_name: str
    role: str
    totp_enrolled: bool
    disabled_at: datetime | None


class SessionOut(msgspec.Struct):
    id: int
    user_id: int
    email: str
    role: str
    label: str
    created_at: datetime
    expires_at: datetime | None
    current: bool


def _qr_png(uri: str) -> bytes:
    image = qrcode.make(uri, border=4, box_size=8)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _provisioning_uri(secret: str, email: str) -> str:
    return pyotp.TOTP(secret).provisioning_uri(name=email, issuer_name=TOTP_ISSUER)


async def _totp_secrets(conn: AsyncConnection, user_id: int) -> tuple[str | None, str | None]:
    row = (await conn.execute(
        text("SELECT totp_secret, totp_pending_secret FROM users WHERE id = :id FOR UPDATE"), {"id": user_id})).one()
    return row.totp_secret, row.totp_pending_secret


class StaffController(Controller):
    path = "/merchant"
    tags = ["merchant app"]
    dependencies = {"staff": Provide(provide_staff), "enrolling": Provide(provide_staff_enrolling)}

    @get("/me")
    async def me(self, enrolling: NamedDependency[Staff], db_engine: NamedDependency[AsyncEngine]) -> MeOut:
        return await _me(db_engine, enrolling)

    @post("/totp/setup", status_code=200)
    async def totp_setup(self, enrolling: NamedDependency[Staff], data: JSONBody[TotpSetupIn], db_engine: NamedDependency[AsyncEngine]) -> TotpSetupOut:
        """A new secret to scan into an authenticator app; active once a first code confirms it.
        Replacing an enrolled factor needs a code from the current one."""
        async with db_engine.begin() as conn:
            current, _ = await _totp_secrets(conn, enrolling.user_id)
            if current and not (data.current_code and pyotp.TOTP(current).verify(data.current_code, valid_window=1)):
                raise ApiError(403, "bad_totp", "To replace your second factor, give a code from the current one.",
                               detail_fr="Pour remplacer votre second facteur, donnez un code de l'actuel.")
            secret = pyotp.random_base32()
            await conn.execute(text("UPDATE users SET totp_pending_secret = :secret WHERE id = :id"),
                               {"secret": secret, "id": enrolling.user_id})
        uri = _provisioning_uri(secret, enrolling.email)
        png = base64.b64encode(_qr_png(uri)).decode()
        return TotpSetupOut(secret, uri, f"data:image/png;base64,{png}")

    @get("/totp/qr.png", media_type="image/png")
    async def totp_qr(self, enrolling: NamedDependency[Staff], db_engine: NamedDependency[AsyncEngine]) -> Response[bytes]:
        """The pending secret's QR as an image, for an authenticator app to scan."""
        async with db_engine.connect() as conn:
            pending = await conn.scalar(text("SELECT totp_pending_secret FROM users WHERE id = :id"), {"id": enrolling.user_id})
        if not pending:
            raise ApiError(404, "no_totp_setup", "Start a second-factor setup first.",
                           detail_fr="Commencez d'abord la configuration du second facteur.")
        return Response(_qr_png(_provisioning_uri(pending, enrolling.email)), media_type="image/png",
                        headers={"Cache-Control": "no-store"})

    @post("/totp/confirm", status_code=200)
    async def totp_confirm(self, enrolling: NamedDependency[Staff], data: JSONBody[TotpConfirmIn], db_engine: NamedDependency[AsyncEngine]) -> MeOut:
        async with db_engine.begin() as conn:
            _, pending = await _totp_secrets(conn, enrolling.user_id)
            if not pending:
                raise ApiError(404, "no_totp_setup", "Start a second-factor setup first.",
                               detail_fr="Commencez d'abord la configuration du second facteur.")
            if not pyotp.TOTP(pending).verify(data.code, valid_window=1):
                raise ApiError(422, "bad_totp", "The 6-digit code is wrong or too old.",
                               detail_fr="Le code à 6 chiffres est faux ou trop ancien.")
            await conn.execute(
                text("UPDATE users SET totp_secret = totp_pending_secret, totp_pending_secret = NULL WHERE id = :id"),
                {"id": enrolling.user_id})
            await append(conn, event_type="merchant.staff_totp_enrolled", actor=enrolling.actor,
                         payload={"merchant_id": enrolling.merchant_id, "user_id": enrolling.user_id})
        return await _me(db_engine, replace(enrolling, totp_enrolled=True))

    @get("/staff")
    async def list_staff(self, staff: NamedDependency[Staff], db_engine: NamedDependency[AsyncEngine]) -> list[StaffOut]:
        staff.check_owner()
        async with db_engine.connect() as conn:
            rows = await conn.execute(
                text(
                    "SELECT id, email, display_name, role, totp_secret IS NOT NULL, disabled_at "
                    "FROM users WHERE merchant_id = :merchant_id ORDER BY id"
                ),
                {"merchant_id": staff.merchant_id},
            )
            return [StaffOut(*row) for row in rows]

    @post("/staff", status_code=201)
    async def add_staff(self, staff: NamedDependency[Staff], data: JSONBody[StaffIn], db_engine: NamedDependency[AsyncEngine]) -> StaffOut:
        staff.check_owner()
        role = Role.MERCHANT_OWNER if data.role == "owner" else Role.MERCHANT_CASHIER
        async with db_engine.begin() as conn:
            count = await conn.scalar(text("SELECT count(*) FROM users WHERE merchant_id = :id"), {"id": staff.merchant_id})
            if count >= STAFF_MAX:
                raise ApiError(422, "too_many_staff", f"A shop has at most {STAFF_MAX} staff accounts.")
            user_id = await create_user(conn, email=data.email, password=data.password, role=role,
                                        display_name=data.display_name, merchant_id=staff.merchant_id)
            await append(conn, event_type="merchant.staff_added", actor=staff.actor, payload={
                "merchant_id": staff.merchant_id, "user_id": user_id, "role": str(role)})
        return StaffOut(user_id, data.email.lower(), data.display_name, str(role), False, None)

    @post("/staff/{user_id:int}/disable", status_code=200)
    async def disable_staff(self, staff: NamedDependency[Staff], user_id: FromPath[int], db_engine: NamedDependency[AsyncEngine]) -> StaffOut:
        """Disable a staff account; its sessions end at once."""
        staff.check_owner()
        if user_id == staff.user_id:
            raise ApiError(422, "cannot_disable_self", "You cannot disable your own account.",
                           detail_fr="Vous ne pouvez pas désactiver votre propre compte.")
        async with db_engine.begin() as conn:
            row = (await conn.execute(
                text(
                    "UPDATE users SET disabled_at = coalesce(disabled_at, now()) "
                    "WHERE id = :id AND merchant_id = :merchant_id "
                    "RETURNING id, email, display_name, role, totp_secret IS NOT NULL, disabled_at"
                ),
                {"id": user_id, "merchant_id": staff.merchant_id},
            )).one_or_none()
            if row is None:
                raise ApiError(404, "not_found", "No staff member of this shop has this id.")
            await conn.execute(text("UPDATE sessions SET revoked_at = now() WHERE user_id = :id AND revoked_at IS NULL"),
                               {"id": user_id})
            await append(conn, event_type="merchant.staff_disabled", actor=staff.actor,
                         payload={"merchant_id": staff.merchant_id, "user_id": user_id})
        return StaffOut(*row)

    @get("/sessions")
    async def sessions(self, staff: NamedDependency[Staff], db_engine: NamedDependency[AsyncEngine]) -> list[SessionOut]:
        """The shop's signed-in devices (sessions still valid), newest first."""
        staff.check_owner()
        async with db_engine.connect() as conn:
            rows = await conn.execute(
                text(
                    """
                    SELECT s.id, u.id, u.email, u.role, s.label, s.created_at, s.expires_at
                    FROM sessions s JOIN users u ON u.id = s.user_id
                    WHERE u.merchant_id = :merchant_id AND s.revoked_at IS NULL
                      AND (s.expires_at IS NULL OR s.expires_at > now())
                    ORDER BY s.created_at DESC, s.id DESC
                    """
                ),
                {"merchant_id": staff.merchant_id},
            )
            return [SessionOut(*row, current=row[0] == staff.session_id) for row in rows]

    @post("/sessions/{session_id:int}/revoke", status_code=200)
    async def revoke(self, staff: NamedDependency[Staff], session_id: FromPath[int], db_engine: NamedDependency[AsyncEngine]) -> dict:
        staff.check_owner()
        async with db_engine.begin() as conn:
            revoked = await conn.scalar(
                text(
                    """
                    UPDATE sessions s SET revoked_at = now() FROM users u
                    WHERE s.id = :id AND u.id = s.user_id AND u.merchant_id = :merchant_id AND s.revoked_at IS NULL
                    RETURNING s.user_id
                    """
                ),
                {"id": session_id, "merchant_id": staff.merchant_id},
            )
            if revoked is None:
                raise ApiError(404, "not_found", "No open session of this shop has this id.",
                               detail_fr="Aucune session ouverte de ce commerce ne correspond.")
            await append(conn, event_type="merchant.session_revoked", actor=staff.actor, payload={
                "merchant_id": staff.merchant_id, "session_id": session_id, "user_id": revoked})
        return {"revoked": session_id}


async def _me(engine: AsyncEngine, staff: Staff) -> MeOut:
    async with engine.connect() as conn:
        merchant = await merchants.get_merchant(conn, staff.merchant_id)
    return MeOut(
        staff.user_id, staff.email, staff.role, merchant.id, merchant.status, merchant.trade_name,
        staff.totp_enrolled, staff.is_owner and not staff.totp_enrolled,
        [{"programme_id": p.programme_id, "name": p.name, "unit": p.unit, "status": p.status}
         for p in merchant.programmes],
    )
