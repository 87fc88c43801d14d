"""The chain as the database holds it: verification against the ledger, and proofs for auditors."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from audit.canonical import record_line
from audit.keys import key_id_of
from audit.merkle import consistency_proof, inclusion_proof, leaf_hash, root
from audit.verify import ChainVerifier, Checkpoint, Problem, Report, verify_lines

STREAM_BATCH = 10_000


@dataclass
class DatabaseReport:
    chain: Report
    transfers: int = 0
    pending_events: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.chain.ok and not self.problems


async def _checkpoints(conn: AsyncConnection) -> list[Checkpoint]:
    rows = (await conn.execute(text("SELECT size, statement, key_id, signature FROM audit_checkpoints ORDER BY size"))).all()
    return [Checkpoint(r.size, bytes(r.statement), r.key_id, bytes(r.signature)) for r in rows]


async def verify_database(conn: AsyncConnection, pinned: list[bytes] | None = None) -> DatabaseReport:
    """Verify the whole live chain, then that it and the ledger's transfers agree one to one.

    On a connection with no transaction yet, it reads everything in one snapshot: a sealer or
    a writer at work meanwhile cannot make a transfer look missing (sealed after the chain was
    read, so neither chained nor waiting) or unknown."""
    if not conn.in_transaction():
        await conn.execute(text("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY"))
    keys = {r.key_id: bytes(r.public_key) for r in (await conn.execute(text("SELECT key_id, public_key FROM audit_keys"))).all()}
    for public in pinned or []:
        keys.setdefault(key_id_of(public), public)
    chained: dict[int, int] = {}

    def observe(body: dict[str, Any]) -> None:
        if body["event_type"].startswith("ledger."):
            transfer_id = body["payload"]["transfer_id"]
            chained[transfer_id] = chained.get(transfer_id, 0) + 1

    verifier = ChainVerifier(checkpoints=await _checkpoints(conn), public_keys=keys,
                             trusted_keys={key_id_of(k) for k in pinned} if pinned else None, observe=observe)
    stream = await conn.stream(text("SELECT body, prev_hash, hash FROM audit_records ORDER BY seq"))

    lines: list[bytes] = []
    async for partition in stream.partitions(STREAM_BATCH):
        lines.extend(record_line(bytes(r.body), bytes(r.hash), bytes(r.prev_hash)) for r in partition)
    sealed_size = (await conn.execute(text("SELECT coalesce(max(size), 0) FROM audit_state"))).scalar_one()
    report = DatabaseReport(chain=verify_lines(lines, verifier, expected_last_seq=sealed_size or None))
    if not report.chain.ok:
        return report

    pending = (await conn.execute(text(
        "SELECT event_type, (payload->>'transfer_id')::bigint FROM audit_pending"))).all()
    report.pending_events = len(pending)
    for transfer_id in (t for kind, t in pending if kind.startswith("ledger.")):
        chained[transfer_id] = chained.get(transfer_id, 0) + 1
    transfers = set((await conn.execute(text("SELECT id FROM transfers"))).scalars().all())
    report.transfers = len(transfers)
    missing = sorted(transfers - chained.keys())
    unknown = sorted(chained.keys() - transfers)
    twice = sorted(t for t, n in chained.items() if n > 1)
    if missing:
        report.problems.append(f"transfer {missing[0]} has no audit record ({len(missing)} in all)")
    if unknown:
        report.problems.append(f"audit records name transfer {unknown[0]}, which the ledger does not have ({len(unknown)} in all)")
    if twice:
        report.problems.append(f"transfer {twice[0]} is recorded more than once in the chain")
    return report


async def _leaves(conn: AsyncConnection, size: int) -> list[bytes]:
    hashes = (await conn.execute(text("SELECT hash FROM audit_records WHERE seq <= :size ORDER BY seq"), {"size": size})).scalars().all()
    return [leaf_hash(bytes(h)) for h in hashes]


async def record_with_proof(conn: AsyncConnection, seq: int, checkpoint_size: int) -> dict[str, Any] | None:
    row = (await conn.execute(text("SELECT body, prev_hash, hash FROM audit_records WHERE seq = :seq"), {"seq": seq})).one_or_none()
    if row is None or seq > checkpoint_size:
        return None
    leaves = await _leaves(conn, checkpoint_size)
    return {
        "seq": seq, "line": record_line(bytes(row.body), bytes(row.hash), bytes(row.prev_hash)).decode(),
        "checkpoint_size": checkpoint_size, "root": root(leaves).hex(),
        "inclusion_proof": [p.hex() for p in inclusion_proof(leaves, seq - 1)],
    }


async def consistency(conn: AsyncConnection, first: int, second: int) -> dict[str, Any]:
    leaves = await _leaves(conn, second)
    return {"first": first, "second": second, "first_root": root(leaves[:first]).hex(),
            "second_root": root(leaves).hex(), "proof": [p.hex() for p in consistency_proof(leaves, first)]}


def problem_text(report: DatabaseReport) -> str:
    return str(report.chain.problem) if report.chain.problem else report.problems[0]


__all__ = ["DatabaseReport", "Problem", "consistency", "problem_text", "record_with_proof", "verify_database"]
