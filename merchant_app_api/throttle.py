"""Rate limits and login lockouts, kept in the database so they hold across processes.

A key (``login:email:…``, ``redeem:session:…``) counts hits in a fixed window; a key may
also count failures and be locked until a time. Each check is one upsert statement.
"""

from __future__ import annotations

import math
from datetime import datetime, timezone

from litestar import Request
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from api.errors import ApiError

_HIT_SQL = text(
    """
    INSERT INTO auth_throttle AS t (key, window_start, hits) VALUES (:key, now(), 1)
    ON CONFLICT (key) DO UPDATE SET
        window_start = CASE WHEN t.window_start <= now() - make_interval(secs => :window_s)
                            THEN now() ELSE t.window_start END,
        hits = CASE WHEN t.window_start <= now() - make_interval(secs => :window_s)
                    THEN 1 ELSE t.hits + 1 END
    RETURNING hits, extract(epoch FROM t.window_start + make_interval(secs => :window_s) - now()) AS left_s
    """
)


def client_ip(request: Request) -> str:
    return request.client.host if request.client else "unknown"


async def hit_in(conn: AsyncConnection, key: str, *, limit: int, window_s: int) -> None:
    """Count one hit on ``key`` in the caller's transaction; refuse past ``limit`` per window."""
    row = (await conn.execute(_HIT_SQL, {"key": key, "window_s": window_s})).one()
    if row.hits > limit:
        retry_after_s = max(1, math.ceil(row.left_s))
        raise ApiError(429, "rate_limited", f"Too many requests; try again in {retry_after_s} s.",
                       detail_fr=f"Trop de demandes ; réessayez dans {retry_after_s} s.",
                       retry_after_s=retry_after_s)


async def hit(engine: AsyncEngine, key: str, *, limit: int, window_s: int) -> None:
    """Count one hit on its own, committed whatever the request does next."""
    async with engine.begin() as conn:
        await hit_in(conn, key, limit=limit, window_s=window_s)


async def locked_until(engine: AsyncEngine, keys: list[str]) -> datetime | None:
    async with engine.connect() as conn:
        return await conn.scalar(
            text("SELECT max(locked_until) FROM auth_throttle WHERE key = ANY(:keys) AND locked_until > now()"),
            {"keys": keys},
        )


async def record_failure(engine: AsyncEngine, key: str, *, failures_max: int, lock_s: int) -> None:
    """Count a failure; the ``failures_max``-th in a row locks the key for ``lock_s`` seconds."""
    async with engine.begin() as conn:
        await conn.execute(
            text(
                """
                INSERT INTO auth_throttle AS t (key, window_start, hits, failures) VALUES (:key, now(), 0, 1)
                ON CONFLICT (key) DO UPDATE SET failures = t.failures + 1
                """
            ),
            {"key": key},
        )
        await conn.execute(
            text(
                "UPDATE auth_throttle SET locked_until = now() + make_interval(secs => :lock_s), failures = 0 "
                "WHERE key = :key AND failures >= :failures_max"
            ),
            {"key": key, "lock_s": lock_s, "failures_max": failures_max},
        )


async def clear_failures(conn: AsyncConnection, key: str) -> None:
    await conn.execute(text("UPDATE auth_throttle SET failures = 0 WHERE key = :key AND failures > 0"), {"key": key})


def locked_error(until: datetime) -> ApiError:
    retry_after_s = max(1, math.ceil((until - datetime.now(timezone.utc)).total_seconds()))
    return ApiError(429, "login_locked", f"Too many failed sign-ins; try again in {retry_after_s} s.",
                    detail_fr=f"Trop d'échecs de connexion ; réessayez dans {retry_after_s} s.",
                    retry_after_s=retry_after_s)
