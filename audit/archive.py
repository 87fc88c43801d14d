"""Signed archives of a period of the chain, and their offline verification.

An archive is one zip file in the open format of docs/audit-format.md: ``records.jsonl``
(the records, one canonical JSON line each, exactly as chained), ``checkpoints.jsonl``,
``keys.json`` (public keys), ``manifest.json`` (what the archive holds, the chain state just
before its first record, and the SHA-256 of each file) and ``manifest.sig`` (Ed25519 over the
manifest). Verifying needs the file and, to pin trust, a public key: nothing else.
"""

from __future__ import annotations

import hashlib
import json
import zipfile
from datetime import date
from pathlib import Path
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from audit import closures
from audit.canonical import canonical, record_line, utc_text
from audit.chain import CHAIN, append
from audit.keys import MANIFEST_DOMAIN, SigningKey, key_id_of, verify_signature
from audit.merkle import Frontier, leaf_hash
from audit.verify import ChainVerifier, Checkpoint, Problem, Report
from audit.verify_parallel import RECORDS_PARALLEL_MIN, verify_records

FORMAT = "circuit-audit-archive/1"
FILES = ("records.jsonl", "checkpoints.jsonl", "keys.json")


class EmptyPeriod(Exception):
    code = "empty_period"


def _checkpoint_line(size: int, statement: bytes, key_id: str, signature: bytes) -> bytes:
    return canonical({"size": size, "statement": statement.decode(), "key_id": key_id, "signature": signature.hex()})


def pack(path: Path, files: dict[str, bytes], manifest: dict[str, Any], key: SigningKey,
         compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    """Write the archive: ``files``, the manifest (completed with their hashes and the signing
    key's id) and its signature. Returns the manifest's bytes."""
    manifest = {**manifest, "files": {name: hashlib.sha256(content).hexdigest() for name, content in files.items()},
                "key_id": key.key_id}
    manifest_bytes = canonical(manifest)
    with zipfile.ZipFile(path, "w", compression=compression) as archive:
        for name, content in files.items():
            archive.writestr(name, content)
        archive.writestr("manifest.json", manifest_bytes)
        archive.writestr("manifest.sig", key.sign(MANIFEST_DOMAIN, manifest_bytes).hex())
    return manifest_bytes


async def export_archive(conn: AsyncConnection, key: SigningKey, path: Path, first_day: date, last_day: date,
                         *, actor: str = "system") -> dict[str, Any]:
    """Write the records chained from ``first_day`` to ``last_day`` (Paris days) to ``path``."""
    start = closures.bounds("day", first_day.isoformat())[0]
    end = closures.bounds("day", last_day.isoformat())[1]
    rows = (await conn.execute(
        text("SELECT seq, body, prev_hash, hash FROM audit_records WHERE ts >= :start AND ts < :end ORDER BY seq"),
        {"start": start, "end": end})).all()
    if not rows:
        raise EmptyPeriod(f"no audit records between {first_day} and {last_day}")
    first_seq, last_seq = rows[0].seq, rows[-1].seq
    before = (await conn.execute(text("SELECT hash FROM audit_records WHERE seq < :first ORDER BY seq"),
                                 {"first": first_seq})).scalars().all()
    frontier = Frontier.of([leaf_hash(bytes(h)) for h in before])
    checkpoints = (await conn.execute(
        text("SELECT size, statement, key_id, signature FROM audit_checkpoints "
             "WHERE size >= :first AND size <= :last ORDER BY size"),
        {"first": first_seq, "last": last_seq})).all()
    keys = (await conn.execute(text("SELECT key_id, public_key, introduced_seq FROM audit_keys ORDER BY introduced_seq"))).all()

    files = {
        "records.jsonl": b"".join(record_line(bytes(r.body), bytes(r.hash), bytes(r.prev_hash)) + b"\n" for r in rows),
        "checkpoints.jsonl": b"".join(
            _checkpoint_line(c.size, bytes(c.statement), c.key_id, bytes(c.signature)) + b"\n" for c in checkpoints),
        "keys.json": canonical({"keys": [{"key_id": k.key_id, "algorithm": "ed25519", "public_key": bytes(k.public_key).hex(),
                                          "introduced_seq": k.introduced_seq} for k in keys]}),
    }
    now = (await conn.execute(text("SELECT clock_timestamp()"))).scalar_one()
    manifest = {
        "format": FORMAT, "chain": CHAIN, "from": first_day.isoformat(), "to": last_day.isoformat(),
        "first_seq": first_seq, "last_seq": last_seq, "records": len(rows),
        "previous": bytes(rows[0].prev_hash).hex(), "head": bytes(rows[-1].hash).hex(),
        "frontier_size": frontier.size, "frontier": [n.hex() for n in frontier.nodes],
        "created_at": utc_text(now),
    }
    manifest_bytes = pack(path, files, manifest, key)
    await append(conn, event_type="audit.exported", actor=actor, payload={
        "from": manifest["from"], "to": manifest["to"], "first_seq": first_seq, "last_seq": last_seq,
        "manifest_sha256": hashlib.sha256(manifest_bytes).hexdigest(),
    })
    return json.loads(manifest_bytes)  # as signed: with the files' hashes and the key id


def parse_public_key(value: str) -> bytes:
    """A public key given as 64 hex characters or as a file holding them (or a PEM key)."""
    candidate = Path(value)
    raw = candidate.read_text().strip() if candidate.exists() else value.strip()
    if raw.startswith("-----BEGIN"):
        from cryptography.hazmat.primitives import serialization

        return serialization.load_pem_public_key(raw.encode()).public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    public = bytes.fromhex(raw)
    if len(public) != 32:
        raise ValueError("an Ed25519 public key is 32 bytes (64 hex characters)")
    return public


def verify_archive(path: Path, pinned: list[bytes] | None = None, *, workers: int | None = None,
                   parallel_min: int = RECORDS_PARALLEL_MIN) -> Report:
    """Verify an archive file offline; ``pinned`` public keys, if given, are the only roots of trust.
    Archives of ``parallel_min`` records or more are checked on ``workers`` processes (default:
    every core), with the same verdict."""
    try:
        archive = zipfile.ZipFile(path)
        manifest_bytes = archive.read("manifest.json")
        manifest = json.loads(manifest_bytes)
        signature = bytes.fromhex(archive.read("manifest.sig").decode().strip())
        contents = {name: archive.read(name) for name in FILES}  # each decompressed once
        keys = {k["key_id"]: bytes.fromhex(k["public_key"]) for k in json.loads(contents["keys.json"])["keys"]}
        checkpoints = [Checkpoint(c["size"], c["statement"].encode(), c["key_id"], bytes.fromhex(c["signature"]))
                       for c in map(json.loads, contents["checkpoints.jsonl"].splitlines())]
        records = contents["records.jsonl"]
    except (OSError, KeyError, ValueError, zipfile.BadZipFile) as error:
        return Report(problem=Problem(f"not a readable Circuit audit archive: {error}"))
    if manifest.get("format") != FORMAT:
        return Report(problem=Problem(f"unknown archive format {manifest.get('format')!r}"))

    trusted = {key_id_of(k) for k in pinned} if pinned else set(keys)
    for public in pinned or []:
        keys.setdefault(key_id_of(public), public)
    verifiers: list[ChainVerifier] = []

    def make_verifier() -> ChainVerifier:
        verifiers.append(ChainVerifier(
            checkpoints=checkpoints, public_keys=keys, trusted_keys=trusted, first_seq=manifest["first_seq"],
            previous=bytes.fromhex(manifest["previous"]),
            frontier=Frontier(manifest["frontier_size"], [bytes.fromhex(n) for n in manifest["frontier"]]),
        ))
        return verifiers[-1]

    digests: dict[str, str] = {}

    def hash_files() -> None:  # on the main process's core while the workers scan the records
        digests.update({name: hashlib.sha256(contents[name]).hexdigest() for name in FILES})

    report = verify_records(records, make_verifier, workers=workers, parallel_min=parallel_min, alongside=hash_files,
                            expected_last_seq=manifest["last_seq"],
                            expected_head=bytes.fromhex(manifest["head"]))
    if not report.ok:
        return report
    signer = manifest.get("key_id")
    if signer not in verifiers[-1].trusted or not verify_signature(keys.get(signer, b""), MANIFEST_DOMAIN, manifest_bytes, signature):
        report.problem = Problem("bad signature on the manifest (or signed by an unknown key)")
        return report
    for name in FILES:
        if digests[name] != manifest["files"].get(name):
            report.problem = Problem(f"{name} does not match the signed manifest")
            return report
    return report
