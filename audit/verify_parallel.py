"""Verification of a large archive on every core, with the same verdict as one pass.

Most of a record's checks need nothing but the record: its line is well formed, its hash is
SHA-256 over its previous hash and body, its body parses, and within a run of records the
sequence numbers follow, each `prev` is the hash before and time never goes back. Day totals
add up across runs, and so does the Merkle tree: a run's leaves are the aligned perfect subtrees
that cover it. So worker processes scan contiguous runs of ``records.jsonl`` and return what the
ordered part needs: the roots of those subtrees (split at every checkpoint size), the hashes at
checkpoint sizes, each day's span and totals, and the few ``audit.*`` records (keys, rotations,
closures). The parent then checks the joins between runs, extends the Merkle frontier a subtree
at a time and replays keys, closures and checkpoints in sequence order on the same
:class:`~audit.verify.ChainVerifier`, with the same code the one-pass verifier uses.

Only a clean verdict comes from here. If anything at all is off, the caller runs the one-pass
verifier, whose job is to name the FIRST bad record and why; this module never reports a
problem of its own, so it cannot name the wrong record.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from audit import closures
from audit.canonical import RECORD_DOMAIN, split_line
from audit.merkle import leaf_hashes, subtree_roots
from audit.verify import ChainVerifier, Report, _Failed, _instant, verify_lines

RECORDS_PARALLEL_MIN = 100_000  # below this, starting processes costs more than it saves
RUNS_PER_WORKER = 8

# Inherited by forked workers, never pickled: the records, the seqs at checkpoint sizes, the first
# seq and the tree size before it (the Merkle leaf index of a seq follows), the checkpoint sizes.
_shared: tuple[bytes, frozenset[int], int, int, frozenset[int]] | None = None


@dataclass
class _Run:
    """What one worker learnt from its run of lines; ``clean`` False means: look closer."""

    clean: bool = True
    lines: int = 0
    first_seq: int = 0
    last_seq: int = 0
    first_ts: str = ""
    last_ts: str = ""
    first_prev_hex: bytes = b""
    last_hash_hex: bytes = b""
    subtrees: list[tuple[bytes, int]] = field(default_factory=list)  # (root, height), left to right
    heads: dict[int, bytes] = field(default_factory=dict)  # seq -> hash hex, at checkpoint sizes
    days: list[list[Any]] = field(default_factory=list)  # [day, first seq, last seq] in order
    day_totals: dict[str, dict[str, Any]] = field(default_factory=dict)
    audit_records: list[tuple[int, dict[str, Any]]] = field(default_factory=list)


def _scan(bounds: tuple[int, int]) -> _Run:
    assert _shared is not None
    records, head_seqs, seq_start, frontier_start, checkpoint_sizes = _shared
    lines = records[bounds[0]:bounds[1]].splitlines()
    run, digests = _Run(lines=len(lines)), []
    day_of_hour: dict[str, str] = {}
    seq_expected, ts_last, day_current, day_span, totals = None, "", None, [], closures.empty_totals()
    sha256, loads, heads, audit_records = hashlib.sha256, orjson.loads, run.heads, run.audit_records
    try:
        previous_hex = run.first_prev_hex = split_line(lines[0])[2]
        previous = bytes.fromhex(previous_hex.decode())
        for line in lines:
            body_bytes, hash_hex, prev_hex = split_line(line)
            if prev_hex != previous_hex:
                return _Run(clean=False)
            # Within a run the previous hash is the digest just computed: no hex to decode.
            previous = sha256(RECORD_DOMAIN + previous + body_bytes).digest()
            body = loads(body_bytes)
            seq, ts, event_type = body["seq"], body["ts"], body["event_type"]
            if (previous.hex().encode() != hash_hex or not isinstance(seq, int) or not isinstance(ts, str)
                    or (seq_expected is not None and seq != seq_expected) or ts < ts_last):
                return _Run(clean=False)
            if seq_expected is None:
                run.first_seq, run.first_ts = seq, ts
            previous_hex, seq_expected, ts_last = hash_hex, seq + 1, ts
            digests.append(previous)
            if seq in head_seqs:
                heads[seq] = hash_hex
            if event_type.startswith("audit."):
                audit_records.append((seq, body))
                if event_type == "audit.closure":
                    continue
            day = day_of_hour.get(ts[:13])
            if day is None:
                day = day_of_hour[ts[:13]] = closures.label_of("day", _instant(ts))
            if day != day_current:
                day_span = [day, seq, seq]
                run.days.append(day_span)
                day_current = day
                totals = run.day_totals.setdefault(day, closures.empty_totals())
            day_span[2] = seq
            closures.add_record(totals, body)
    except (ValueError, KeyError, TypeError, AttributeError, IndexError):
        return _Run(clean=False)
    if run.first_seq < seq_start:  # not a run of this archive: the joins would refuse it
        return _Run(clean=False)
    run.last_seq, run.last_ts, run.last_hash_hex = seq_expected - 1, ts_last, previous_hex
    run.subtrees = subtree_roots(leaf_hashes(digests), run.first_seq - seq_start + frontier_start, checkpoint_sizes)
    return run


def _bounds(records: bytes, parts: int) -> list[tuple[int, int]]:
    bounds, start = [], 0
    for k in range(1, parts):
        cut = records.find(b"\n", max(start, len(records) * k // parts))
        if cut < 0:
            break
        bounds.append((start, cut + 1))
        start = cut + 1
    bounds.append((start, len(records)))
    return [b for b in bounds if b[0] < b[1]]


def verify_records(records: bytes, make_verifier: Callable[[], ChainVerifier], *, workers: int | None = None,
                   parallel_min: int = RECORDS_PARALLEL_MIN, alongside: Callable[[], None] = lambda: None,
                   **finish: Any) -> Report:
    """Verify ``records`` (the bytes of records.jsonl); the verdict of :func:`verify_lines`, faster.
    ``alongside`` is other work of the caller's, run once: while the workers scan, if they do."""
    workers = workers or os.cpu_count() or 1
    verifier = make_verifier()
    if workers > 1 and verifier.observe is None and _lines_at_least(records, parallel_min):
        report = _verify_runs(records, verifier, workers, alongside, finish)
        return report if report is not None else verify_lines(records.splitlines(), make_verifier(), **finish)
    alongside()
    return verify_lines(records.splitlines(), verifier, **finish)


def _lines_at_least(records: bytes, count: int) -> bool:
    """Whether ``records`` holds ``count`` lines or more: counted over a growing prefix, so that a
    large archive is not read through once more just to decide (a full count took 0.3 s of 5.6)."""
    end = 1 << 20
    while records.count(b"\n", 0, end) < count:
        if end >= len(records):
            return False
        end *= 4
    return True


def _verify_runs(records: bytes, verifier: ChainVerifier, workers: int, alongside: Callable[[], None],
                 finish: dict[str, Any]) -> Report | None:
    global _shared
    frontier_start, seq_start = verifier.frontier.size, verifier.expected_seq
    seq_of_size = {size: seq_start - 1 + size - frontier_start for size in verifier.checkpoints}
    _shared = (records, frozenset(seq_of_size.values()), seq_start, frontier_start,
               frozenset(verifier.checkpoints))
    try:
        with multiprocessing.get_context("fork").Pool(workers) as pool:
            # Many more runs than workers: a worker slowed by the main process's own work (or by
            # another program) takes fewer, and none is left alone with a long last one.
            pending = pool.map_async(_scan, _bounds(records, workers * RUNS_PER_WORKER), chunksize=1)
            alongside()
            runs = pending.get()
    finally:
        _shared = None
    if not runs or not all(run.clean and run.lines for run in runs):
        return None
    # The joins: each run follows the one before as a record follows its previous one.
    previous_hex, seq_next, ts_last = verifier.previous_hex, verifier.expected_seq, ""
    for run in runs:
        if run.first_prev_hex != previous_hex or run.first_seq != seq_next or run.first_ts < ts_last:
            return None
        previous_hex, seq_next, ts_last = run.last_hash_hex, run.last_seq + 1, run.last_ts

    days: list[list[Any]] = []
    for run in runs:
        for day, first, last in run.days:
            if days and days[-1][0] == day:
                days[-1][2] = last
            else:
                days.append([day, first, last])
    last_seq_of_day = {day: last for day, _, last in days}
    verifier.day_totals = {day: closures.sum_totals([r.day_totals[day] for r in runs if day in r.day_totals])
                           for day in last_seq_of_day}
    audit_records = [record for run in runs for record in run.audit_records]
    for seq, body in audit_records:
        # A day's totals here are the whole day's: sound only if no record of the day follows its closure.
        payload = body.get("payload") or {}
        if (body["event_type"] == "audit.closure" and payload.get("kind") == "day"
                and last_seq_of_day.get(payload.get("period"), -1) > seq):
            return None

    heads = {seq: hash_hex for run in runs for seq, hash_hex in run.heads.items()}
    subtrees = iter([subtree for run in runs for subtree in run.subtrees])
    steps = sorted(
        [(seq, 0, body) for seq, body in audit_records]
        + [(first, 1, day) for day, first, _ in days]
        + [(seq, 2, size) for size, seq in seq_of_size.items() if seq_start <= seq < seq_next]
    )
    frontier = verifier.frontier
    try:
        for seq, step, value in steps:
            if step == 0:
                verifier._follow_audit(seq, value["event_type"], value.get("payload") or {})
            elif step == 1:
                verifier._check_no_missing_closure(seq, value)
                verifier.current_day = value
            else:
                while frontier.size < value:  # the workers' subtrees stop at every checkpoint size
                    frontier.append_subtree(*next(subtrees))
                verifier.previous = bytes.fromhex(heads[seq].decode())
                verifier._check_checkpoint(verifier.checkpoints[value], seq)
        for node, height in subtrees:
            frontier.append_subtree(node, height)
        verifier.previous, verifier.previous_hex = bytes.fromhex(previous_hex.decode()), previous_hex
        verifier.expected_seq, verifier.last_ts = seq_next, ts_last
        verifier.report.first_seq, verifier.report.first_ts = runs[0].first_seq, runs[0].first_ts
        verifier.line = sum(run.lines for run in runs)
        return verifier.finish(**finish)
    except _Failed:
        return None
