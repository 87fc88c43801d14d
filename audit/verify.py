"""Verification of a chain from its records alone: no database, no server, only public keys.

One pass over the records in order checks, for each: that it is a well-formed record line,
that its hash is SHA-256 over its own bytes and its previous hash, that its previous hash is
the hash of the record before, that sequence numbers follow without gap or repeat, that
chain times never go back; at each checkpoint size, that the Merkle root and head match the
statement and the statement's Ed25519 signature is by a trusted key; at each closure, that
its totals are what the records say and no closure is missing. It stops at the FIRST problem
and names the record.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import hashlib

import orjson

from audit import closures
from audit.canonical import GENESIS_HASH, RECORD_DOMAIN, split_line
from audit.keys import CHECKPOINT_DOMAIN, ROTATION_DOMAIN, key_id_of, verify_signature
from audit.merkle import Frontier, leaf_hash


@dataclass(frozen=True)
class Checkpoint:
    size: int
    statement: bytes
    key_id: str
    signature: bytes

    @property
    def fields(self) -> dict[str, Any]:
        return orjson.loads(self.statement)


@dataclass(frozen=True)
class Problem:
    reason: str
    seq: int | None = None
    line: int | None = None

    def __str__(self) -> str:
        where = f"record {self.seq}" if self.seq is not None else "the archive"
        if self.line is not None:
            where += f" (line {self.line})"
        return f"{where}: {self.reason}"


@dataclass
class Report:
    records: int = 0
    first_seq: int | None = None
    last_seq: int | None = None
    first_ts: str | None = None
    last_ts: str | None = None
    last_checkpoint: dict[str, Any] | None = None
    closures: list[dict[str, Any]] = field(default_factory=list)
    problem: Problem | None = None
    trusted_keys: set[str] = field(default_factory=set)

    @property
    def ok(self) -> bool:
        return self.problem is None


class _Failed(Exception):
    def __init__(self, problem: Problem) -> None:
        self.problem = problem


class ChainVerifier:
    """Feed record lines in order with :meth:`add`, then :meth:`finish`."""

    def __init__(
        self, *, checkpoints: Iterable[Checkpoint], public_keys: dict[str, bytes],
        trusted_keys: set[str] | None = None, first_seq: int = 1, previous: bytes = GENESIS_HASH,
        frontier: Frontier | None = None, observe: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        self.observe = observe
        self.checkpoints = {c.size: c for c in checkpoints}
        self.public_keys = dict(public_keys)
        # Without pinned keys, trust the chain's own first registered key (say so to the user).
        self.pinned = trusted_keys is not None
        self.trusted = set(trusted_keys or ())
        self.expected_seq = first_seq
        self.previous = previous
        self.previous_hex = previous.hex().encode()
        self.frontier = frontier or Frontier()
        self.report = Report(trusted_keys=self.trusted)
        self.last_ts: str | None = None
        self.day_totals: dict[str, dict[str, Any]] = {}
        self.closed: dict[tuple[str, str], dict[str, Any]] = {}
        self.current_day: str | None = None
        self._day_by_hour: dict[str, str] = {}
        self.line = 0

    def _fail(self, reason: str, seq: int | None = None) -> None:
        raise _Failed(Problem(reason, seq, self.line))

    def add(self, line: bytes) -> None:
        self.line += 1
        try:
            body_bytes, hash_hex, prev_hex = split_line(line)
            # The usual case, a record following the one before, needs no hex decoding.
            previous = self.previous if prev_hex == self.previous_hex else bytes.fromhex(prev_hex.decode())
            if previous is not self.previous and previous.hex().encode() != prev_hex:
                raise ValueError("hashes are written in lower-case hex only")
        except ValueError:
            self._fail("not a well-formed record line: content altered", self.expected_seq)
        computed = hashlib.sha256(RECORD_DOMAIN + previous + body_bytes)
        if computed.hexdigest().encode() != hash_hex:
            self._fail("content altered: the record's hash does not match its content", self.expected_seq)
        try:
            body = orjson.loads(body_bytes)
            seq, ts = body["seq"], body["ts"]
        except (orjson.JSONDecodeError, KeyError, TypeError):
            self._fail("content altered: the record body is not a valid record", self.expected_seq)
        if seq != self.expected_seq:
            if seq < self.expected_seq:
                self._fail(f"record inserted or reordered: sequence {seq} appears where {self.expected_seq} belongs",
                           self.expected_seq)
            self._fail(f"record missing or reordered: found sequence {seq} in its place", self.expected_seq)
        if previous is not self.previous:
            self._fail(f"the previous record was altered or removed: this record follows hash "
                       f"{prev_hex[:16].decode()}…, not {self.previous_hex[:16].decode()}…", seq - 1 if seq > 1 else seq)
        if self.last_ts is not None and ts < self.last_ts:
            self._fail("order changed: chain time goes backwards", seq)
        self._follow(seq, body)
        digest = computed.digest()
        self.previous, self.previous_hex, self.last_ts = digest, hash_hex, ts
        self.frontier.append(leaf_hash(digest))
        self.expected_seq += 1
        if self.report.first_ts is None:
            self.report.first_ts, self.report.first_seq = ts, seq
        if self.frontier.size in self.checkpoints:
            self._check_checkpoint(self.checkpoints[self.frontier.size], seq)

    def _follow(self, seq: int, body: dict[str, Any]) -> None:
        if self.observe is not None:
            self.observe(body)
        event_type = body["event_type"]
        if event_type.startswith("audit."):
            if self._follow_audit(seq, event_type, body.get("payload") or {}):
                return
        day = self._paris_day(body["ts"])
        if day != self.current_day:
            self._check_no_missing_closure(seq, day)
            self.current_day = day
        totals = self.day_totals.get(day)
        if totals is None:
            totals = self.day_totals[day] = closures.empty_totals()
        closures.add_record(totals, body)

    def _follow_audit(self, seq: int, event_type: str, payload: dict[str, Any]) -> bool:
        """Keys and closures; True when the record is a closure (not counted in a day)."""
        if event_type == "audit.key_registered":
            public = bytes.fromhex(payload["public_key"])
            self.public_keys.setdefault(key_id_of(public), public)
            if not self.pinned and not self.trusted:
                self.trusted.add(key_id_of(public))
        elif event_type == "audit.key_rotated":
            public = bytes.fromhex(payload["public_key"])
            endorser = payload["old_key_id"]
            if endorser not in self.trusted or not verify_signature(
                self.public_keys.get(endorser, b""), ROTATION_DOMAIN, public, bytes.fromhex(payload["endorsement"])
            ):
                self._fail("bad signature: key rotation not endorsed by a trusted key", seq)
            self.public_keys[key_id_of(public)] = public
            self.trusted.add(key_id_of(public))
        elif event_type == "audit.closure":
            self._check_closure(seq, payload)
            return True
        return False

    def _paris_day(self, ts: str) -> str:
        # Paris is a whole number of hours from UTC, so the day is the same for a whole UTC hour.
        hour = ts[:13]
        day = self._day_by_hour.get(hour)
        if day is None:
            day = self._day_by_hour[hour] = closures.label_of("day", _instant(ts))
        return day

    def _check_no_missing_closure(self, seq: int, day: str) -> None:
        if self.current_day is None:
            return
        for kind in closures.KINDS:
            stop = closures.label_of(kind, _instant(day + "T12:00:00Z"))
            start = closures.label_of(kind, _instant(self.current_day + "T12:00:00Z"))
            for label in closures.labels_between(kind, start, stop):
                if (kind, label) not in self.closed:
                    self._fail(f"closure missing: no {kind} closure for {label} before later records", seq)

    def _check_closure(self, seq: int, payload: dict[str, Any]) -> None:
        kind, label = payload["kind"], payload["period"]
        if kind == "day":
            expected = self.day_totals.get(label)
            if expected is not None and payload["totals"] != expected:
                self._fail(f"closure totals for {label} do not match its records", seq)
        else:
            parts = [p["totals"] for (k, lbl), p in self.closed.items()
                     if k == closures.PARENT[kind] and closures.label_of(kind, _instant(p["from"])) == label]
            if parts and payload["totals"] != closures.sum_totals(parts):
                self._fail(f"closure totals for {kind} {label} do not match its parts", seq)
        previous = [p for (k, _), p in self.closed.items() if k == kind]
        if previous:
            latest = max(previous, key=lambda p: p["period"])
            if payload["perpetual"] != closures.sum_totals([latest["perpetual"], payload["totals"]]):
                self._fail(f"perpetual totals of the {kind} closure {label} do not follow the previous closure", seq)
        self.closed[(kind, label)] = payload
        self.report.closures.append({"kind": kind, "period": label, "records": payload["records"],
                                     "totals": payload["totals"]})

    def _check_checkpoint(self, checkpoint: Checkpoint, seq: int) -> None:
        fields = checkpoint.fields
        if checkpoint.key_id not in self.public_keys:
            self._fail(f"unknown key {checkpoint.key_id} signed the checkpoint at size {checkpoint.size}", seq)
        if checkpoint.key_id not in self.trusted:
            self._fail(f"checkpoint at size {checkpoint.size} is signed by key {checkpoint.key_id}, "
                       "which is not trusted (unknown key)", seq)
        if not verify_signature(self.public_keys[checkpoint.key_id], CHECKPOINT_DOMAIN, checkpoint.statement,
                                checkpoint.signature):
            self._fail(f"bad signature on the checkpoint at size {checkpoint.size}", seq)
        if fields["size"] != checkpoint.size or fields["key_id"] != checkpoint.key_id:
            self._fail(f"the checkpoint at size {checkpoint.size} does not say what it signs", seq)
        if fields["root"] != self.frontier.root().hex() or fields["head"] != self.previous.hex():
            self._fail(f"records up to {seq} were rewritten: they do not match the signed checkpoint at size "
                       f"{checkpoint.size}", seq)
        self.report.last_checkpoint = {"size": checkpoint.size, "ts": fields["ts"], "key_id": checkpoint.key_id}

    def _count(self) -> None:
        report = self.report
        report.last_seq = self.expected_seq - 1 if report.first_seq is not None else None
        report.records = report.last_seq - report.first_seq + 1 if report.first_seq is not None else 0
        report.last_ts = self.last_ts

    def finish(self, *, expected_last_seq: int | None = None, expected_head: bytes | None = None) -> Report:
        self._count()
        if expected_last_seq is not None and self.expected_seq - 1 < expected_last_seq:
            self._fail(f"tail truncated: the chain ends at {self.expected_seq - 1} but goes to {expected_last_seq}",
                       self.expected_seq)
        if expected_head is not None and self.previous != expected_head:
            self._fail("the last record is not the signed head of the chain", self.expected_seq - 1)
        beyond = [size for size in self.checkpoints if size > self.frontier.size]
        if beyond:
            self._fail(f"tail truncated: a checkpoint covers {max(beyond)} records but only "
                       f"{self.frontier.size} remain", self.frontier.size + 1)
        return self.report


def verify_lines(lines: Iterable[bytes], verifier: ChainVerifier, **finish: Any) -> Report:
    """Run ``verifier`` over ``lines``; the report carries the first problem, if any."""
    try:
        for line in lines:
            verifier.add(line)
        return verifier.finish(**finish)
    except _Failed as failure:
        verifier._count()
        verifier.report.problem = failure.problem
        return verifier.report


def _instant(utc: str) -> datetime:
    return datetime.fromisoformat(utc.replace("Z", "+00:00"))
