"""The audit chain: append business events, seal them into a signed hash chain, close periods.

A ledger write is its own event: the transfer row records who acted and which transaction
wrote it. Other writers call :func:`append` (or the SQL function ``audit_append``) inside the
transaction that makes the change: one insert into ``audit_inbox``. No lock, no sequence, so
writers never queue behind the chain. :func:`seal` is the only place records are chained. It
runs under an advisory lock that only sealers take; it closes every period that has ended (so
a period is a contiguous run of records), chains the events of every transaction that has
ended since the last pass, transaction by transaction, with gapless sequence numbers and a
monotonic chain time, and signs a checkpoint every ``CHECKPOINT_RECORDS`` records, every
``CHECKPOINT_SECONDS`` and at each closure. See docs/audit.md for the design and its
guarantees.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import structlog
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from audit import closures
from audit.canonical import ALGORITHM, canonical, record_hash, utc_text
from audit.keys import CHECKPOINT_DOMAIN, ROTATION_DOMAIN, SigningKey
from audit.merkle import Frontier, leaf_hash

log = structlog.get_logger("audit")

CHAIN = "circuit"
SEAL_LOCK_ID = 0x41554449  # "AUDI": held only by sealers, never by writers
SEAL_BATCH_MAX = 5_000
CHECKPOINT_RECORDS = 1_000
CHECKPOINT_SECONDS = 10.0
SEAL_INTERVAL_SECONDS = 0.2
ACTOR_LENGTH_MAX = 200


class UnknownSigningKey(Exception):
    code = "unknown_signing_key"


async def set_actor(conn: AsyncConnection, actor: str) -> None:
    """Name who acts for the rest of this transaction (read by the ledger's audit events)."""
    await conn.execute(text("SELECT set_config('circuit.actor', :actor, true)"), {"actor": actor[:ACTOR_LENGTH_MAX]})


class UnencodablePayload(ValueError):
    code = "unencodable_payload"


async def append(conn: AsyncConnection, *, event_type: str, payload: dict[str, Any], actor: str | None = None) -> int:
    """Record a business event in the caller's transaction; returns its inbox id."""
    try:
        canonical(payload)
    except Exception as error:  # RFC 8785 refuses NaN, infinities, integers beyond 2**53
        raise UnencodablePayload(f"audit payload cannot be canonically encoded: {error}") from None
    return (
        await conn.execute(
            text("SELECT audit_append(:event_type, CAST(:payload AS jsonb), :actor)"),
            {"event_type": event_type, "payload": json.dumps(payload, ensure_ascii=False), "actor": actor},
        )
    ).scalar_one()


@dataclass
class _Head:
    size: int
    head: bytes
    head_ts: datetime | None
    frontier: Frontier
    checkpoint_size: int
    checkpoint_at: datetime | None
    ledger_horizon: int


@dataclass(frozen=True)
class SealResult:
    sealed: int
    closures: int
    checkpoint_size: int | None
    size: int
    more: bool = False  # the pass stopped at SEAL_BATCH_MAX with ended transactions left


class _Writer:
    """Records appended in one seal, written to the database in one statement."""

    def __init__(self, head: _Head) -> None:
        self.head = head
        self.rows: list[tuple[int, int | None, datetime, str, bytes, bytes, bytes]] = []

    def add(self, *, event_id: int | None, ts: datetime, event_at: datetime | None, event_type: str,
            actor: str, payload: Any) -> int:
        head = self.head
        ts = max(ts, head.head_ts) if head.head_ts else ts
        seq = head.size + 1
        body = canonical({
            "v": 1, "alg": ALGORITHM, "chain": CHAIN, "seq": seq, "ts": utc_text(ts),
            "event_at": utc_text(event_at) if event_at else None, "event_type": event_type,
            "actor": actor, "payload": payload,
        })
        digest = record_hash(head.head, body)
        self.rows.append((seq, event_id, ts, event_type, body, head.head, digest))
        head.size, head.head, head.head_ts = seq, digest, ts
        head.frontier.append(leaf_hash(digest))
        return seq

    async def flush(self, conn: AsyncConnection) -> None:
        if not self.rows:
            return
        columns = list(zip(*self.rows))
        await conn.execute(
            text(
                """
                INSERT INTO audit_records (seq, chain, event_id, ts, event_type, body, prev_hash, hash, algorithm)
                SELECT s, :chain, e, t, ty, b, p, h, :alg FROM unnest(
                    CAST(:seqs AS bigint[]), CAST(:events AS bigint[]), CAST(:ts AS timestamptz[]),
                    CAST(:types AS text[]), CAST(:bodies AS bytea[]), CAST(:prevs AS bytea[]),
                    CAST(:hashes AS bytea[])) AS r(s, e, t, ty, b, p, h)
                """
            ),
            {"chain": CHAIN, "alg": ALGORITHM, "seqs": list(columns[0]), "events": list(columns[1]),
             "ts": list(columns[2]), "types": list(columns[3]), "bodies": list(columns[4]),
             "prevs": list(columns[5]), "hashes": list(columns[6])},
        )
        self.rows.clear()


async def _load_head(conn: AsyncConnection) -> _Head:
    await conn.execute(text("INSERT INTO audit_state (chain) VALUES (:chain) ON CONFLICT DO NOTHING"), {"chain": CHAIN})
    row = (
        await conn.execute(
            text("SELECT size, head_hash, head_ts, frontier, checkpoint_size, checkpoint_at, ledger_horizon "
                 "FROM audit_state WHERE chain = :chain FOR UPDATE"),
            {"chain": CHAIN},
        )
    ).one()
    return _Head(row.size, bytes(row.head_hash), row.head_ts, Frontier(row.size, [bytes(n) for n in row.frontier]),
                 row.checkpoint_size, row.checkpoint_at, row.ledger_horizon)


async def _save_head(conn: AsyncConnection, head: _Head) -> None:
    await conn.execute(
        text("UPDATE audit_state SET size = :size, head_hash = :head, head_ts = :ts, frontier = :frontier, "
             "checkpoint_size = :cp_size, checkpoint_at = :cp_at, ledger_horizon = :horizon WHERE chain = :chain"),
        {"size": head.size, "head": head.head, "ts": head.head_ts, "frontier": head.frontier.nodes,
         "cp_size": head.checkpoint_size, "cp_at": head.checkpoint_at, "horizon": head.ledger_horizon,
         "chain": CHAIN},
    )


def checkpoint_statement(size: int, root: bytes, head: bytes, ts: datetime, key_id: str) -> bytes:
    return canonical({"v": 1, "chain": CHAIN, "size": size, "root": root.hex(), "head": head.hex(),
                      "ts": utc_text(ts), "key_id": key_id})


async def _checkpoint(conn: AsyncConnection, head: _Head, key: SigningKey, now: datetime) -> int:
    statement = checkpoint_statement(head.size, head.frontier.root(), head.head, now, key.key_id)
    await conn.execute(
        text("INSERT INTO audit_checkpoints (size, statement, key_id, signature) VALUES (:size, :st, :key, :sig)"),
        {"size": head.size, "st": statement, "key": key.key_id, "sig": key.sign(CHECKPOINT_DOMAIN, statement)},
    )
    head.checkpoint_size, head.checkpoint_at = head.size, now
    return head.size


async def _ensure_key(conn: AsyncConnection, writer: _Writer, key: SigningKey, now: datetime) -> None:
    known = (await conn.execute(text("SELECT key_id FROM audit_keys"))).scalars().all()
    if key.key_id in known:
        return
    if known:
        raise UnknownSigningKey(
            f"signing key {key.key_id} is not registered in this chain; introduce it with "
            "`circuit audit rotate-key`, signed by the current key"
        )
    seq = writer.add(event_id=None, ts=now, event_at=None, event_type="audit.key_registered", actor="system",
                     payload={"key_id": key.key_id, "public_key": key.public_bytes.hex(), "algorithm": "ed25519"})
    await conn.execute(text("INSERT INTO audit_keys (key_id, public_key, introduced_seq) VALUES (:id, :pk, :seq)"),
                       {"id": key.key_id, "pk": key.public_bytes, "seq": seq})


async def _bodies(conn: AsyncConnection, sql: str, params: dict[str, Any]) -> list[dict[str, Any]]:
    return [json.loads(bytes(row[0])) for row in (await conn.execute(text(sql), params)).all()]


async def _close_ended_periods(conn: AsyncConnection, writer: _Writer, now: datetime) -> int:
    """Append a closure for every period that ended since the chain began and has none."""
    head = writer.head
    if head.size == 0 and not writer.rows:
        return 0
    await writer.flush(conn)
    first_ts = (await conn.execute(text("SELECT ts FROM audit_records WHERE seq = 1"))).scalar_one()
    existing = await _bodies(conn, "SELECT body FROM audit_records WHERE event_type = 'audit.closure' ORDER BY seq", {})
    closed = {(b["payload"]["kind"], b["payload"]["period"]): b["payload"] for b in existing}
    made = 0
    for kind in closures.KINDS:
        latest = max((p for (k, _), p in closed.items() if k == kind), key=lambda p: p["period"], default=None)
        for label in closures.labels_between(kind, closures.label_of(kind, first_ts), closures.label_of(kind, now)):
            if (kind, label) in closed:
                latest = closed[(kind, label)]
                continue
            start, end = closures.bounds(kind, label)
            if kind == "day":
                rows = (await conn.execute(
                    text("SELECT seq, body FROM audit_records WHERE ts >= :start AND ts < :end "
                         "AND event_type NOT LIKE 'audit.%' ORDER BY seq"),
                    {"start": start, "end": end})).all()
                totals = closures.totals_of(json.loads(bytes(r.body)) for r in rows)
                seqs = [r.seq for r in rows]
            else:
                parts = [p for (k, _), p in closed.items()
                         if k == closures.PARENT[kind] and start <= _parse(p["from"]) < end]
                totals = closures.sum_totals(p["totals"] for p in parts)
                seqs = [s for p in parts for s in (p["first_seq"], p["last_seq"]) if s is not None]
            payload = closures.closure_payload(
                kind, label, totals, latest["perpetual"] if latest else None,
                min(seqs) if seqs else None, max(seqs) if seqs else None,
                sum(totals["events"].values()),
            )
            writer.add(event_id=None, ts=now, event_at=None, event_type="audit.closure", actor="system", payload=payload)
            await writer.flush(conn)
            closed[(kind, label)] = latest = payload
            made += 1
    return made


# The events of the transactions with ids in [:from, :to), transaction by transaction, a
# transaction's ledger events (in transfer order) before its other events (in the order
# written); then the inbox events of the sealing transaction itself (appended and sealed
# together, as a command may do). Inbox events written before migration 0002b carry no
# transaction id (NULL, taken as 0) and are chained first.
_EVENTS_SQL = text(
    """
    SELECT inbox_id, event_at, event_type, actor, payload::text AS payload FROM (
        SELECT e.xid, 0 AS source, e.transfer_id AS id, NULL::bigint AS inbox_id, e.event_at, e.event_type,
               e.actor, e.payload
        FROM audit_ledger_events(:from, :to) e
        UNION ALL
        SELECT coalesce(i.xid, 0), 1, i.id, i.id, i.event_at, i.event_type, i.actor, i.payload FROM audit_inbox i
        WHERE coalesce(i.xid, 0) < :to OR i.xid = pg_current_xact_id_if_assigned()::text::bigint
    ) events
    ORDER BY xid, source, id
    """
)

# Among the events of ended transactions from the horizon on, the first one's transaction and
# the transaction of the one just past SEAL_BATCH_MAX.
_BATCH_SQL = text(
    """
    WITH waiting AS (
        SELECT xid FROM audit_ledger_events(:from, :to)
        UNION ALL
        SELECT coalesce(xid, 0) FROM audit_inbox WHERE coalesce(xid, 0) < :to
    )
    SELECT (SELECT min(xid) FROM waiting) AS first,
           (SELECT xid FROM waiting ORDER BY xid OFFSET :n LIMIT 1) AS past
    """
)


async def _next_horizon(conn: AsyncConnection, horizon: int, ended_below: int) -> tuple[int, bool]:
    """Where this pass stops: below ``ended_below`` (only ended transactions), at a transaction
    boundary, with about ``SEAL_BATCH_MAX`` events (more if one transaction alone has more).
    Also whether ended transactions are left for another pass."""
    if ended_below <= horizon:
        return horizon, False
    row = (await conn.execute(_BATCH_SQL, {"from": horizon, "to": ended_below, "n": SEAL_BATCH_MAX})).one()
    if row.past is None:
        return ended_below, False
    return max(horizon, row.past if row.past > row.first else row.past + 1), True


def _parse(utc: str) -> datetime:
    return datetime.fromisoformat(utc.replace("Z", "+00:00"))


async def seal(conn: AsyncConnection, key: SigningKey, *, close_periods: bool | None = None,
               force_checkpoint: bool = False, now: datetime | None = None) -> SealResult:
    """Chain what is waiting in the inbox, close ended periods, sign a checkpoint when due.

    Periods are looked at when the day has changed since the last record (``close_periods``
    None), always (True: the backfill of ``circuit audit close``), or never (False). ``now``
    is the database clock unless given (tests move days forward with it)."""
    await conn.execute(text("SELECT pg_advisory_xact_lock(:id)"), {"id": SEAL_LOCK_ID})
    # Read before this transaction writes anything: every transaction below this id has ended.
    ended_below = (await conn.execute(text("SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint"))).scalar_one()
    head = await _load_head(conn)
    now = now or (await conn.execute(text("SELECT clock_timestamp()"))).scalar_one()
    writer = _Writer(head)
    await _ensure_key(conn, writer, key, now)
    if close_periods is None:
        close_periods = head.head_ts is None or closures.label_of("day", head.head_ts) != closures.label_of("day", now)
    made = await _close_ended_periods(conn, writer, now) if close_periods else 0

    horizon, more = await _next_horizon(conn, head.ledger_horizon, ended_below)
    events = (await conn.execute(_EVENTS_SQL, {"from": head.ledger_horizon, "to": horizon})).all()
    for event in events:
        fields = {"event_id": event.inbox_id, "ts": now, "event_at": event.event_at, "event_type": event.event_type,
                  "actor": event.actor}
        try:
            writer.add(**fields, payload=json.loads(event.payload))
        except ValueError:
            # A payload RFC 8785 cannot encode (written by SQL bypassing append()) is chained
            # verbatim as text rather than blocking the chain.
            writer.add(**fields, payload={"unencodable_json": event.payload})
    await writer.flush(conn)
    inbox_ids = [e.inbox_id for e in events if e.inbox_id is not None]
    if inbox_ids:
        await conn.execute(text("DELETE FROM audit_inbox WHERE id = ANY(CAST(:ids AS bigint[]))"), {"ids": inbox_ids})
    head.ledger_horizon = horizon

    checkpoint = None
    due = head.size > head.checkpoint_size and (
        force_checkpoint or made > 0 or head.size - head.checkpoint_size >= CHECKPOINT_RECORDS
        or head.checkpoint_at is None or (now - head.checkpoint_at).total_seconds() >= CHECKPOINT_SECONDS
    )
    if due:
        checkpoint = await _checkpoint(conn, head, key, now)
    await _save_head(conn, head)
    return SealResult(sealed=len(events), closures=made, checkpoint_size=checkpoint, size=head.size, more=more)


async def seal_all(engine: AsyncEngine, key: SigningKey, *, force_checkpoint: bool = False) -> int:
    """Seal until the inbox is empty (what CLI commands do before reading the chain)."""
    while True:
        async with engine.begin() as conn:
            result = await seal(conn, key, force_checkpoint=force_checkpoint)
        if not result.more:
            return result.size


async def rotate_key(conn: AsyncConnection, old: SigningKey, new: SigningKey) -> int:
    """Introduce ``new`` by a record endorsed by ``old``, sealed under a checkpoint signed by
    ``old``; later checkpoints are signed by ``new`` and earlier ones still verify."""
    await seal(conn, old, force_checkpoint=True)
    head = await _load_head(conn)
    now = (await conn.execute(text("SELECT clock_timestamp()"))).scalar_one()
    writer = _Writer(head)
    seq = writer.add(event_id=None, ts=now, event_at=None, event_type="audit.key_rotated", actor="system", payload={
        "old_key_id": old.key_id, "new_key_id": new.key_id, "public_key": new.public_bytes.hex(),
        "endorsement": old.sign(ROTATION_DOMAIN, new.public_bytes).hex(),
    })
    await writer.flush(conn)
    await conn.execute(text("INSERT INTO audit_keys (key_id, public_key, introduced_seq) VALUES (:id, :pk, :seq)"),
                       {"id": new.key_id, "pk": new.public_bytes, "seq": seq})
    await _checkpoint(conn, head, old, now)
    await _save_head(conn, head)
    return seq


async def run_sealer(engine: AsyncEngine, key: SigningKey, stop: asyncio.Event) -> None:
    """What ``serve`` runs: seal every ``SEAL_INTERVAL_SECONDS`` until told to stop."""
    while not stop.is_set():
        more = False
        try:
            async with engine.begin() as conn:
                result = await seal(conn, key)
            more = result.more
            if result.closures:
                log.info("audit_periods_closed", count=result.closures)
        except UnknownSigningKey as error:
            log.error("audit_sealer_stopped", reason=str(error))
            return
        except Exception:
            log.exception("audit_seal_failed")
        if not more:
            try:
                await asyncio.wait_for(stop.wait(), timeout=SEAL_INTERVAL_SECONDS)
            except TimeoutError:
                pass
