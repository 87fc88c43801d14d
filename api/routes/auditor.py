"""The auditor's read-only view of the chain, and the public keys anyone may fetch."""

from __future__ import annotations

import tempfile
from datetime import date
from pathlib import Path
from typing import Annotated, Any

import msgspec
from litestar import Controller, Request, Response, get
from litestar.di import NamedDependency
from litestar.params import FromPath, FromQuery, QueryParameter
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from api.auth import AuthUser, Role, requires
from api.errors import ApiError
from api.settings import audit_signing_key
from audit.archive import EmptyPeriod, export_archive
from audit.live import consistency, record_with_proof

KEYS_PATH = "/.well-known/circuit-audit-keys.json"


class HeadOut(msgspec.Struct):
    size: int
    head_hash: str
    checkpoint: dict[str, Any] | None
    pending_events: int


async def _latest_checkpoint(conn) -> dict[str, Any] | None:
    row = (await conn.execute(text(
        "SELECT size, statement, key_id, signature FROM audit_checkpoints ORDER BY size DESC LIMIT 1"))).one_or_none()
    return _checkpoint(row) if row else None


def _checkpoint(row) -> dict[str, Any]:
    return {"size": row.size, "statement": bytes(row.statement).decode(), "key_id": row.key_id,
            "signature": bytes(row.signature).hex()}


@get(KEYS_PATH, exclude_from_auth=True, tags=["audit"])
async def public_keys(db_engine: NamedDependency[AsyncEngine]) -> dict[str, Any]:
    """Every key that ever signed the chain, so anyone can verify an archive."""
    async with db_engine.connect() as conn:
        rows = (await conn.execute(text("SELECT key_id, public_key, introduced_seq FROM audit_keys ORDER BY introduced_seq"))).all()
    return {"keys": [{"key_id": r.key_id, "algorithm": "ed25519", "public_key": bytes(r.public_key).hex(),
                      "introduced_seq": r.introduced_seq} for r in rows]}


class AuditorController(Controller):
    path = "/audit"
    tags = ["audit"]
    guards = [requires(Role.AUDITOR, Role.OPERATOR)]

    @get("/head")
    async def head(self, db_engine: NamedDependency[AsyncEngine]) -> HeadOut:
        async with db_engine.connect() as conn:
            state = (await conn.execute(text("SELECT size, head_hash FROM audit_state LIMIT 1"))).one_or_none()
            pending = (await conn.execute(text("SELECT count(*) FROM audit_pending"))).scalar_one()
            checkpoint = await _latest_checkpoint(conn)
        return HeadOut(size=state.size if state else 0, head_hash=bytes(state.head_hash).hex() if state else "",
                       checkpoint=checkpoint, pending_events=pending)

    @get("/checkpoints")
    async def checkpoints(self, db_engine: NamedDependency[AsyncEngine], after: FromQuery[int] = 0,
                          limit: FromQuery[int] = 100) -> list[dict[str, Any]]:
        async with db_engine.connect() as conn:
            rows = (await conn.execute(text(
                "SELECT size, statement, key_id, signature FROM audit_checkpoints WHERE size > :after "
                "ORDER BY size LIMIT :limit"), {"after": after, "limit": max(1, min(limit, 1000))})).all()
        return [_checkpoint(r) for r in rows]

    @get("/records/{seq:int}")
    async def record(self, seq: FromPath[int], db_engine: NamedDependency[AsyncEngine],
                     checkpoint: FromQuery[int | None] = None) -> dict[str, Any]:
        """A record as chained, with its inclusion proof in a checkpoint (the latest by default)."""
        async with db_engine.connect() as conn:
            size = checkpoint or (await _latest_checkpoint(conn) or {}).get("size", 0)
            if checkpoint and not await conn.scalar(text("SELECT 1 FROM audit_checkpoints WHERE size = :s"), {"s": checkpoint}):
                raise ApiError(404, "unknown_checkpoint", "No checkpoint has this size.")
            found = await record_with_proof(conn, seq, size)
        if found is None:
            raise ApiError(404, "record_not_in_checkpoint", "No such record under this checkpoint (it may not be sealed yet).")
        return found

    @get("/consistency")
    async def consistency(self, first: FromQuery[int], second: FromQuery[int],
                          db_engine: NamedDependency[AsyncEngine]) -> dict[str, Any]:
        async with db_engine.connect() as conn:
            sizes = set((await conn.execute(text("SELECT size FROM audit_checkpoints WHERE size IN (:a, :b)"),
                                            {"a": first, "b": second})).scalars().all())
            if {first, second} - sizes or first > second:
                raise ApiError(422, "unknown_checkpoint", "Both sizes must be checkpoints, the first no larger.")
            return await consistency(conn, first, second)

    @get("/closures")
    async def closures(self, db_engine: NamedDependency[AsyncEngine], kind: FromQuery[str | None] = None) -> list[dict[str, Any]]:
        async with db_engine.connect() as conn:
            rows = (await conn.execute(text(
                "SELECT seq, body FROM audit_records WHERE event_type = 'audit.closure' ORDER BY seq"))).all()
        found = [{"seq": r.seq, **msgspec.json.decode(bytes(r.body))["payload"]} for r in rows]
        return [c for c in found if kind in (None, c["kind"])]

    @get("/archive", media_type="application/zip")
    async def archive(self, request: Request[AuthUser, str, Any], db_engine: NamedDependency[AsyncEngine],
                      first_day: Annotated[date, QueryParameter(name="from")],
                      last_day: Annotated[date, QueryParameter(name="to")]) -> Response[bytes]:
        """A signed archive of the period (Paris days, inclusive); downloading it is recorded."""
        with tempfile.TemporaryDirectory() as directory:
            path = Path(directory) / "archive.zip"
            try:
                async with db_engine.begin() as conn:
                    await export_archive(conn, audit_signing_key(), path, first_day, last_day, actor=f"user:{request.user.id}")
            except EmptyPeriod as error:
                raise ApiError(404, "empty_period", str(error)) from None
            content = path.read_bytes()
        return Response(content, media_type="application/zip", headers={
            "Content-Disposition": f'attachment; filename="circuit-audit-{first_day}-{last_day}.zip"'})
