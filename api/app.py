"""The Litestar application: one factory used by ``circuit serve`` and by the tests."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import structlog
from litestar import Litestar
from litestar.di import Provide
from litestar.middleware.base import DefineMiddleware
from litestar.openapi import OpenAPIConfig
from litestar.datastructures import State
from litestar.types import ASGIApp, Message, Receive, Scope, Send
from sqlalchemy.ext.asyncio import AsyncEngine

from api.auth import TokenAuthMiddleware
from api.errors import EXCEPTION_HANDLERS
from api.features import collect
from api.logging import configure_logging
from api.routes.auditor import AuditorController, public_keys
from api.routes.auth import AuthController
from api.routes.health import health
from api.routes.ledger import LedgerController
from api.settings import audit_signing_key
from audit.chain import run_sealer
from ledger.database import create_engine, database_url
from ledger.transfers import expire_due_holds

log = structlog.get_logger("api")

ROUTE_HANDLERS: list[Any] = [health, AuthController, LedgerController, AuditorController, public_keys]
PUBLIC_PATHS = ["^/schema", "^/health$", "^/.well-known/"]
HOLD_SWEEP_SECONDS = 5.0
REQUEST_ID_LENGTH_MAX = 64


def request_id_middleware(app: ASGIApp) -> ASGIApp:
    """Give every request an id (the client's ``X-Request-ID`` if sane), log it, echo it."""

    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        given = dict(scope["headers"]).get(b"x-request-id", b"").decode("latin-1")
        request_id = given if 0 < len(given) <= REQUEST_ID_LENGTH_MAX and given.isprintable() else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id
        started = time.perf_counter()
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"x-request-id", request_id.encode())]
            await send(message)

        with structlog.contextvars.bound_contextvars(request_id=request_id):
            try:
                await app(scope, receive, send_with_id)
            finally:
                log.info(
                    "request", method=scope["method"], path=scope["path"], status=status,
                    duration_ms=round((time.perf_counter() - started) * 1000, 2),
                )

    return middleware


async def _sweep_holds(engine: AsyncEngine) -> None:
    while True:
        try:
            async with engine.begin() as conn:
                expired = await expire_due_holds(conn)
            if expired:
                log.info("holds_expired", count=len(expired))
        except Exception:
            log.exception("hold_sweep_failed")
        await asyncio.sleep(HOLD_SWEEP_SECONDS)


def _engine_of(state: State) -> AsyncEngine:
    return state.engine


def create_app(
    *, engine: AsyncEngine | None = None, url: str | None = None, background: bool = True
) -> Litestar:
    """Build the app. Without an engine, one is created on start-up from ``url`` (or the
    configured database) and disposed of on shutdown; ``background`` runs the periodic jobs."""
    configure_logging()

    @contextlib.asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        own_engine = engine is None
        if own_engine:
            app.state.engine = create_engine(url or database_url())
            # This process serves this app until it stops, and what start-up built (modules,
            # routes, the engine) lives as long: the cyclic collector need not walk it again.
            # Walking those ~160,000 objects took ~65 ms, a stall of every request in flight
            # that set the redemptions' p99 (BENCHMARKS.md, Merchants: ~145 → ~95 ms).
            gc.collect()
            gc.freeze()
        stop = asyncio.Event()
        jobs = []
        if background:
            jobs = [asyncio.create_task(_sweep_holds(app.state.engine)),
                    asyncio.create_task(run_sealer(app.state.engine, audit_signing_key(), stop))]
            jobs += [asyncio.create_task(job(app.state.engine, stop)) for job in collect("JOBS")]
        try:
            yield
        finally:
            stop.set()
            for job in jobs:
                job.cancel()
            await asyncio.gather(*jobs, return_exceptions=True)
            if own_engine:
                await app.state.engine.dispose()

    return Litestar(
        route_handlers=[*ROUTE_HANDLERS, *collect("ROUTES")],
        lifespan=[lifespan],
        state=State({"engine": engine}),
        dependencies={"db_engine": Provide(_engine_of, sync_to_thread=False)},
        middleware=[request_id_middleware, DefineMiddleware(TokenAuthMiddleware, exclude=[*PUBLIC_PATHS, *collect("PUBLIC_PATHS")])],
        exception_handlers=EXCEPTION_HANDLERS,
        openapi_config=OpenAPIConfig(
            title="Circuit", version="0.1.0",
            description="Closed-loop local money: local currencies and multi-merchant gift vouchers.",
        ),
    )
