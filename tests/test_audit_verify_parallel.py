"""Property: an archive of any later period (a Merkle frontier before its first record, signed
checkpoints anywhere in it), checked on several processes, gets the one-pass verifier's report
without falling back to it; and an archive whose checkpoint does not match its records is
refused with the one-pass verifier's first problem."""

from __future__ import annotations

import zipfile
from datetime import datetime, timezone
from pathlib import Path
from unittest import mock

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from audit import verify_parallel
from audit.archive import FORMAT, pack, verify_archive
from audit.canonical import GENESIS_HASH, canonical, record_hash, record_line
from audit.chain import checkpoint_statement
from audit.keys import CHECKPOINT_DOMAIN, generate
from audit.merkle import Frontier, leaf_hash

KEY = generate()


def _write_archive(path: Path, first_seq: int, records: int, checkpoint_sizes: set[int], forged_size: int | None = None) -> None:
    """Records ``first_seq`` … ``first_seq + records - 1`` of a one-day chain of transfers, with the
    frontier of the records before; a checkpoint at each size (``forged_size``'s root is wrong)."""
    frontier, previous = Frontier(), GENESIS_HASH
    lines, checkpoints, manifest = [], [], {}
    for seq in range(1, first_seq + records):
        if seq == first_seq:
            manifest = {"previous": previous.hex(), "frontier_size": frontier.size,
                        "frontier": [n.hex() for n in frontier.nodes]}
        ts = f"2026-11-24T10:{seq // 60 % 60:02d}:{seq % 60:02d}.000000Z"
        payload = {"key": f"k-{seq}", "kind": "payment", "metadata": {"programme_id": seq % 3},
                   "postings": [[2 * seq, "BUL", -100 - seq % 7], [2 * seq + 1, "BUL", 100 + seq % 7]]}
        body = canonical({"v": 1, "alg": "sha256-jcs-v1", "chain": "circuit", "seq": seq, "ts": ts, "event_at": ts,
                          "event_type": "ledger.transfer", "actor": "user:1", "payload": payload})
        digest = record_hash(previous, body)
        frontier.append(leaf_hash(digest))
        if seq >= first_seq:
            lines.append(record_line(body, digest, previous) + b"\n")
        previous = digest
        if seq in checkpoint_sizes:
            root = leaf_hash(b"forged") if seq == forged_size else frontier.root()
            statement = checkpoint_statement(seq, root, digest, datetime(2026, 11, 24, 11, tzinfo=timezone.utc),
                                             KEY.key_id)
            checkpoints.append(canonical({"size": seq, "statement": statement.decode(), "key_id": KEY.key_id,
                                          "signature": KEY.sign(CHECKPOINT_DOMAIN, statement).hex()}) + b"\n")
    files = {"records.jsonl": b"".join(lines), "checkpoints.jsonl": b"".join(checkpoints),
             "keys.json": canonical({"keys": [{"key_id": KEY.key_id, "algorithm": "ed25519",
                                               "public_key": KEY.public_bytes.hex(), "introduced_seq": 1}]})}
    pack(path, files, {**manifest, "format": FORMAT, "chain": "circuit", "from": "2026-11-24", "to": "2026-11-24",
                       "first_seq": first_seq, "last_seq": first_seq + records - 1, "records": records,
                       "head": previous.hex(), "created_at": "2026-11-24T11:00:00.000000Z"},
         KEY, compression=zipfile.ZIP_STORED)


archives = st.tuples(st.integers(1, 70), st.integers(1, 150)).flatmap(lambda case: st.tuples(
    st.just(case[0]), st.just(case[1]),
    st.sets(st.integers(case[0], case[0] + case[1] - 1), max_size=8),
    st.integers(2, 5)))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(archives)
def test_a_later_period_checked_on_several_processes_gets_the_one_pass_report(tmp_path, case):
    first_seq, records, checkpoint_sizes, workers = case
    path = tmp_path / f"a-{first_seq}-{records}-{workers}.zip"
    _write_archive(path, first_seq, records, checkpoint_sizes)
    one_pass = verify_archive(path, [KEY.public_bytes], workers=1)
    assert one_pass.ok, one_pass.problem
    assert one_pass.records == records and one_pass.first_seq == first_seq
    with mock.patch.object(verify_parallel, "verify_lines", side_effect=AssertionError("fell back to one pass")):
        parallel = verify_archive(path, [KEY.public_bytes], workers=workers, parallel_min=1)
    assert parallel == one_pass


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(archives.flatmap(lambda case: st.tuples(st.just(case), st.sampled_from(sorted(case[2]) or [None]))))
def test_a_checkpoint_that_does_not_match_its_records_is_named_by_both_paths(tmp_path, case):
    (first_seq, records, checkpoint_sizes, workers), forged_size = case
    path = tmp_path / f"f-{first_seq}-{records}-{workers}-{forged_size}.zip"
    _write_archive(path, first_seq, records, checkpoint_sizes, forged_size)
    one_pass = verify_archive(path, [KEY.public_bytes], workers=1)
    assert one_pass.ok == (forged_size is None)
    if forged_size is not None:
        assert one_pass.problem.seq == forged_size and "checkpoint" in one_pass.problem.reason
    assert verify_archive(path, [KEY.public_bytes], workers=workers, parallel_min=1) == one_pass


@pytest.mark.parametrize("newline_at", [0, (1 << 20) - 1, 1 << 20, (4 << 20) + 5, (5 << 20) - 1])
def test_deciding_whether_to_start_processes_counts_lines_exactly(newline_at):
    records = bytearray(b"x" * (5 << 20))
    records[7] = records[newline_at] = ord("\n")
    lines = records.count(b"\n")
    for wanted in range(lines + 2):
        assert verify_parallel._lines_at_least(bytes(records), wanted) == (wanted <= lines)
