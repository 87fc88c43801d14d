"""Sign in, sign out, who am I, and API tokens for machine clients."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

import msgspec
from litestar.params import JSONBody
from litestar import Controller, Request, get, post
from litestar.di import NamedDependency
from sqlalchemy.ext.asyncio import AsyncEngine

from api.auth import AuthUser, Role, issue_token, login, requires, revoke_session
from api.throttle import client_ip, guarded_login


class LoginRequest(msgspec.Struct, forbid_unknown_fields=True):
    email: Annotated[str, msgspec.Meta(min_length=3, max_length=254)]
    password: Annotated[str, msgspec.Meta(min_length=1, max_length=256)]
    totp_code: Annotated[str, msgspec.Meta(pattern=r"^[0-9]{6}$")] | None = None
    device_label: Annotated[str, msgspec.Meta(max_length=200)] = ""


class SessionOut(msgspec.Struct):
    token: str
    expires_at: datetime | None
    user_id: int
    role: str


class MeOut(msgspec.Struct):
    user_id: int
    email: str
    role: str
    issuer_id: int | None
    merchant_id: int | None
    wallet_id: int | None


class ApiTokenRequest(msgspec.Struct, forbid_unknown_fields=True):
    label: Annotated[str, msgspec.Meta(min_length=1, max_length=200)]


class AuthController(Controller):
    path = "/auth"
    tags = ["auth"]

    @post("/login", exclude_from_auth=True, status_code=200)
    async def login(self, data: JSONBody[LoginRequest], request: Request, db_engine: NamedDependency[AsyncEngine]) -> SessionOut:
        token, expires_at, user = await guarded_login(
            db_engine, ip=client_ip(request), email=data.email,
            attempt=lambda conn: login(conn, email=data.email, password=data.password, totp_code=data.totp_code,
                                       label=data.device_label),
        )
        return SessionOut(token=token, expires_at=expires_at, user_id=user.id, role=user.role)

    @post("/logout", status_code=204)
    async def logout(self, request: Request[AuthUser, str, object], db_engine: NamedDependency[AsyncEngine]) -> None:
        async with db_engine.begin() as conn:
            await revoke_session(conn, token_hash=request.user.session_hash, user_id=request.user.id)

    @get("/me")
    async def me(self, request: Request[AuthUser, str, object]) -> MeOut:
        user = request.user
        return MeOut(user.id, user.email, user.role, user.issuer_id, user.merchant_id, user.wallet_id)

    @post("/api-tokens", guards=[requires(Role.OPERATOR, Role.AUDITOR)], status_code=201)
    async def api_token(
        self, data: JSONBody[ApiTokenRequest], request: Request[AuthUser, str, object], db_engine: NamedDependency[AsyncEngine]
    ) -> SessionOut:
        """A long-lived token for a machine client (bank connector, accounting export…)."""
        async with db_engine.begin() as conn:
            token, _ = await issue_token(conn, user_id=request.user.id, kind="api", label=data.label, ttl=None)
        return SessionOut(token=token, expires_at=None, user_id=request.user.id, role=request.user.role)
