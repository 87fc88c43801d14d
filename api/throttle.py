"""Rate limits and login lockouts, kept in the database so they hold across processes.

A key (``login:email:…``, ``redeem:session:…``) counts hits in a fixed window; a key may
also count failures and be locked until a time. Each check is one upsert statement.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable
from datetime import datetime, timezone
from typing import TypeVar

import structlog
from litestar import Request
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from api.errors import ApiError

log = structlog.get_logger("api")

LOGINS_PER_IP_PER_MINUTE = 120  # a shop, an office behind one address: the per-email lock does the rest
LOGIN_FAILURES_MAX = 5  # in a row, for one email: then the email is locked
LOGIN_LOCK_SECONDS = 15 * 60
_LOGIN_FAILURES = ("bad_credentials", "bad_totp")

T = TypeVar("T")

# A counter need not survive a crash: its commit does not wait for the disk (synchronous_commit
# off for this transaction only), which keeps the check off the payment's critical path.
# HIT_STATEMENT counts one hit on :key in a window of :window_s seconds and returns the count
# and the seconds left in the window; a caller may wrap it in a CTE to read more in one trip.
# HIT_UPSERT is the same upsert counting {hits} hits on {key} for each row of {source} (one row
# per key), for a statement that runs inside a larger transaction (whose commit must stay
# durable); it also returns the key.
HIT_UPSERT = """
    INSERT INTO auth_throttle AS t (key, window_start, hits)
    SELECT {key}, now(), {hits} FROM {source}
    ON CONFLICT (key) DO UPDATE SET
        window_start = CASE WHEN t.window_start <= now() - make_interval(secs => :window_s)
                            THEN now() ELSE t.window_start END,
        hits = CASE WHEN t.window_start <= now() - make_interval(secs => :window_s)
                    THEN excluded.hits ELSE t.hits + excluded.hits END
    RETURNING hits, extract(epoch FROM t.window_start + make_interval(secs => :window_s) - now()) AS left_s, t.key
"""
HIT_STATEMENT = HIT_UPSERT.replace("{key}", ":key").replace("{hits}", "1").replace(
    "{source}", "(SELECT set_config('synchronous_commit', 'off', true)) AS relaxed")
_HIT_SQL = text(HIT_STATEMENT)


def client_ip(request: Request) -> str:
    return request.client.host if request.client else "unknown"


async def hit(engine: AsyncEngine, key: str, *, limit: int, window_s: int) -> None:
    """Count one hit on ``key`` in its own transaction, committed whatever the request does
    next (without waiting for the disk); refuse past ``limit`` per window."""
    async with engine.connect() as conn:
        # One statement, its own transaction: no BEGIN and COMMIT round trips around it.
        autocommit = await conn.execution_options(isolation_level="AUTOCOMMIT")
        row = (await autocommit.execute(_HIT_SQL, {"key": key, "window_s": window_s})).one()
    check_hits(row.hits, row.left_s, limit)


def check_hits(hits: int, left_s: float, limit: int) -> None:
    """Refuse a request past ``limit`` hits in its window."""
    if hits > limit:
        retry_after_s = max(1, math.ceil(left_s))
        raise ApiError(429, "rate_limited", f"Too many requests; try again in {retry_after_s} s.",
                       detail_fr=f"Trop de demandes ; réessayez dans {retry_after_s} s.",
                       retry_after_s=retry_after_s)


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


async def guarded_login(
    engine: AsyncEngine, *, ip: str, email: str, attempt: Callable[[AsyncConnection], Awaitable[T]]
) -> T:
    """Run a sign-in ``attempt`` in its own transaction behind the IP rate limit and the
    email's lockout; a wrong password or code counts towards the lock, a success resets it."""
    await hit(engine, f"login:ip:{ip}", limit=LOGINS_PER_IP_PER_MINUTE, window_s=60)
    key = f"login:email:{email.strip().lower()}"
    until = await locked_until(engine, [key])
    if until is not None:
        raise locked_error(until)
    try:
        async with engine.begin() as conn:
            result = await attempt(conn)
            await clear_failures(conn, key)
            return result
    except ApiError as error:
        if error.code in _LOGIN_FAILURES:
            await record_failure(engine, key, failures_max=LOGIN_FAILURES_MAX, lock_s=LOGIN_LOCK_SECONDS)
        raise


THROTTLE_SWEEP_SECONDS = 3600
THROTTLE_KEEP_SECONDS = 86_400


async def forget_stale(conn: AsyncConnection) -> int:
    """Drop counters whose window ended a day ago and whose lock (if any) is over: every
    address or email ever tried would otherwise stay in the table."""
    result = await conn.execute(
        text(
            "DELETE FROM auth_throttle WHERE window_start < now() - make_interval(secs => :keep_s) "
            "AND (locked_until IS NULL OR locked_until < now())"
        ),
        {"keep_s": THROTTLE_KEEP_SECONDS},
    )
    return result.rowcount


async def sweep_job(engine: AsyncEngine, stop: asyncio.Event) -> None:
    """``forget_stale`` every hour, while the server runs."""
    while not stop.is_set():
        try:
            async with engine.begin() as conn:
                await forget_stale(conn)
        except Exception:
            log.exception("throttle_sweep_failed")
        try:
            await asyncio.wait_for(stop.wait(), timeout=THROTTLE_SWEEP_SECONDS)
        except TimeoutError:
            pass
