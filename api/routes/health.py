"""Liveness that means something: the database answers and its schema is current."""

from __future__ import annotations

import msgspec
from litestar import Response, get
from litestar.di import NamedDependency
from sqlalchemy.ext.asyncio import AsyncEngine

from ledger.database import applied_heads, expected_heads


class HealthOut(msgspec.Struct):
    status: str
    database: str
    migrations: str


@get("/health", exclude_from_auth=True, tags=["health"])
async def health(db_engine: NamedDependency[AsyncEngine]) -> Response[HealthOut]:
    try:
        async with db_engine.connect() as conn:
            applied = await applied_heads(conn)
    except Exception:
        return Response(HealthOut("unavailable", "unreachable", "unknown"), status_code=503)
    current = applied == expected_heads()
    body = HealthOut("ok" if current else "degraded", "ok", "current" if current else "pending")
    return Response(body, status_code=200 if current else 503)
