"""Who is calling: users, password login, session and API tokens, role guards.

Passwords are hashed with Argon2id; tokens are random and stored only as SHA-256 hashes,
so a copy of the database does not let anyone sign in. A token is sent as
``Authorization: Bearer <token>``; routes marked ``exclude_from_auth`` are public.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from enum import StrEnum

import pyotp
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from litestar.connection import ASGIConnection
from litestar.handlers.base import BaseRouteHandler
from litestar.middleware import AbstractAuthenticationMiddleware, AuthenticationResult
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from api.errors import ApiError

SESSION_TTL = timedelta(hours=12)
TOKEN_PREFIX = "ck_"
PASSWORD_LENGTH_MIN = 10
PASSWORD_LENGTH_MAX = 256

_hasher = PasswordHasher()
# Verified against when the email is unknown, so a miss costs as long as a wrong password.
_DUMMY_HASH = _hasher.hash("circuit-dummy-password")


class Role(StrEnum):
    OPERATOR = "operator"
    APPROVER = "approver"
    EMPLOYER = "employer"
    RESIDENT = "resident"
    MERCHANT_OWNER = "merchant_owner"
    MERCHANT_CASHIER = "merchant_cashier"
    AUDITOR = "auditor"


@dataclass(frozen=True, slots=True)
class AuthUser:
    id: int
    email: str
    role: str
    issuer_id: int | None
    merchant_id: int | None
    wallet_id: int | None
    session_hash: bytes


def hash_token(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def hash_password(password: str) -> str:
    if not PASSWORD_LENGTH_MIN <= len(password) <= PASSWORD_LENGTH_MAX:
        raise ApiError(422, "weak_password", f"A password has {PASSWORD_LENGTH_MIN} to {PASSWORD_LENGTH_MAX} characters.")
    return _hasher.hash(password)


async def create_user(
    conn: AsyncConnection,
    *,
    email: str,
    password: str,
    role: str,
    display_name: str = "",
    issuer_id: int | None = None,
    merchant_id: int | None = None,
    wallet_id: int | None = None,
    totp_secret: str | None = None,
) -> int:
    if role not in Role.__members__.values():
        raise ApiError(422, "invalid_role", f"Unknown role {role!r}.", roles=[r.value for r in Role])
    existing = await conn.scalar(text("SELECT 1 FROM users WHERE email = lower(:email)"), {"email": email})
    if existing:
        raise ApiError(409, "email_taken", "A user with this email already exists.")
    return (
        await conn.execute(
            text(
                """
                INSERT INTO users (email, display_name, role, password_hash, issuer_id, merchant_id,
                                   wallet_id, totp_secret)
                VALUES (lower(:email), :display_name, :role, :hash, :issuer_id, :merchant_id,
                        :wallet_id, :totp_secret)
                RETURNING id
                """
            ),
            {"email": email, "display_name": display_name, "role": role, "hash": hash_password(password),
             "issuer_id": issuer_id, "merchant_id": merchant_id, "wallet_id": wallet_id,
             "totp_secret": totp_secret},
        )
    ).scalar_one()


async def issue_token(
    conn: AsyncConnection, *, user_id: int, kind: str = "session", label: str = "",
    ttl: timedelta | None = SESSION_TTL,
) -> tuple[str, datetime | None]:
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    expires_at = datetime.now(timezone.utc) + ttl if ttl else None
    await conn.execute(
        text(
            "INSERT INTO sessions (token_hash, user_id, kind, label, expires_at) "
            "VALUES (:hash, :user_id, :kind, :label, :expires_at)"
        ),
        {"hash": hash_token(token), "user_id": user_id, "kind": kind, "label": label[:200],
         "expires_at": expires_at},
    )
    return token, expires_at


async def login(
    conn: AsyncConnection, *, email: str, password: str, totp_code: str | None, label: str = ""
) -> tuple[str, datetime | None, AuthUser]:
    """Check a password (and the TOTP code when the user has a second factor); open a session."""
    row = (
        await conn.execute(
            text(
                "SELECT id, password_hash, totp_secret FROM users "
                "WHERE email = lower(:email) AND disabled_at IS NULL"
            ),
            {"email": email},
        )
    ).one_or_none()
    try:
        _hasher.verify(row.password_hash if row else _DUMMY_HASH, password)
        if row is None:
            raise VerificationError()
    except (VerificationError, InvalidHashError):
        raise ApiError(401, "bad_credentials", "Wrong email or password.") from None
    if row.totp_secret:
        if not totp_code:
            raise ApiError(401, "totp_required", "Enter the 6-digit code from your authenticator app.")
        if not pyotp.TOTP(row.totp_secret).verify(totp_code, valid_window=1):
            raise ApiError(401, "bad_totp", "The 6-digit code is wrong or too old.")
    token, expires_at = await issue_token(conn, user_id=row.id, label=label)
    user = await user_for_token(conn, token)
    assert user is not None
    return token, expires_at, user


# When a token (its hash in :hash) signs in: sessions s, users u. A route that checks the
# token inside a larger statement (to save a round trip) uses this same condition.
VALID_SESSION = """
    s.token_hash = :hash AND s.revoked_at IS NULL
    AND (s.expires_at IS NULL OR s.expires_at > now()) AND u.disabled_at IS NULL
"""
_USER_FOR_TOKEN_SQL = text(
    f"""
    SELECT u.id, u.email, u.role, u.issuer_id, u.merchant_id, u.wallet_id, s.token_hash
    FROM sessions s JOIN users u ON u.id = s.user_id
    WHERE {VALID_SESSION}
    """
)


async def user_for_token(conn: AsyncConnection, token: str) -> AuthUser | None:
    row = (await conn.execute(_USER_FOR_TOKEN_SQL, {"hash": hash_token(token)})).one_or_none()
    return AuthUser(*row) if row else None


def bearer_token(header: str) -> str:
    """The token of an ``Authorization: Bearer …`` header, or a 401."""
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.startswith(TOKEN_PREFIX):
        raise ApiError(401, "unauthenticated", "Sign in first: this needs a valid token.")
    return token.strip()


def unknown_token() -> ApiError:
    return ApiError(401, "unauthenticated", "This token is unknown, expired or revoked.")


async def revoke_session(conn: AsyncConnection, *, token_hash: bytes, user_id: int) -> bool:
    result = await conn.execute(
        text(
            "UPDATE sessions SET revoked_at = now() "
            "WHERE token_hash = :hash AND user_id = :user_id AND revoked_at IS NULL"
        ),
        {"hash": token_hash, "user_id": user_id},
    )
    return result.rowcount == 1


class TokenAuthMiddleware(AbstractAuthenticationMiddleware):
    async def authenticate_request(self, connection: ASGIConnection) -> AuthenticationResult:
        token = bearer_token(connection.headers.get("authorization", ""))
        engine: AsyncEngine = connection.app.state.engine
        async with engine.connect() as conn:
            # One read per request: without BEGIN and ROLLBACK round trips around it.
            user = await user_for_token(await conn.execution_options(isolation_level="AUTOCOMMIT"), token)
        if user is None:
            raise unknown_token()
        return AuthenticationResult(user=user, auth=token)


def requires(*roles: Role) -> Callable[[ASGIConnection, BaseRouteHandler], None]:
    """A guard that lets through only users with one of ``roles``."""
    allowed = {str(role) for role in roles}

    def guard(connection: ASGIConnection, _: BaseRouteHandler) -> None:
        if connection.user.role not in allowed:
            raise ApiError(403, "forbidden", "Your role does not allow this.", allowed_roles=sorted(allowed))

    return guard
