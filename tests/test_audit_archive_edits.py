"""Property: any single edit of an exported archive fails verification and names the first
affected record; the untouched archive passes. And the canonical encoding is the same bytes
in any process and any timezone."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import zipfile
from datetime import timedelta
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from audit.archive import export_archive, verify_archive
from audit.chain import append, seal
from audit.keys import generate

KEY = generate()
RECORDS = 40


@pytest.fixture(scope="module")
async def archive_bytes(engine, tmp_path_factory) -> bytes:
    async with engine.begin() as conn:
        for i in range(RECORDS - 1):
            await append(conn, event_type="voucher.issued", actor="user:7",
                         payload={"voucher_id": i, "amount_cents": 1000 + i, "note": "Chèque cadeau n°" + str(i)})
            if i % 9 == 0:
                await seal(conn, KEY, force_checkpoint=True)
        await seal(conn, KEY, force_checkpoint=True)
    path = tmp_path_factory.mktemp("archive") / "a.zip"
    async with engine.begin() as conn:
        today = (await conn.scalar(__import__("sqlalchemy").text("SELECT current_date")))
        await export_archive(conn, KEY, path, today - timedelta(days=1), today + timedelta(days=1))
    return path.read_bytes()


def _with_records(archive: bytes, records: bytes, directory: Path) -> Path:
    source = zipfile.ZipFile(io.BytesIO(archive))
    path = directory / f"edited-{os.urandom(4).hex()}.zip"
    with zipfile.ZipFile(path, "w") as edited:
        for name in source.namelist():
            edited.writestr(name, records if name == "records.jsonl" else source.read(name))
    return path


def test_the_untouched_archive_verifies_with_the_pinned_key(archive_bytes, tmp_path):
    path = tmp_path / "a.zip"
    path.write_bytes(archive_bytes)
    report = verify_archive(path, [KEY.public_bytes])
    assert report.ok and report.records == RECORDS


def test_a_different_pinned_key_is_refused(archive_bytes, tmp_path):
    path = tmp_path / "a.zip"
    path.write_bytes(archive_bytes)
    report = verify_archive(path, [generate().public_bytes])
    assert not report.ok and "not trusted" in report.problem.reason


edits = st.sampled_from(["flip", "delete", "duplicate", "swap"])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(edit=edits, index=st.integers(0, RECORDS - 2), position=st.integers(0, 10_000), bit=st.integers(0, 7))
def test_any_single_edit_is_caught_at_the_first_affected_record(archive_bytes, tmp_path, edit, index, position, bit):
    lines = zipfile.ZipFile(io.BytesIO(archive_bytes)).read("records.jsonl").splitlines(keepends=True)
    if edit == "flip":
        line = bytearray(lines[index])
        offset = position % (len(line) - 1)  # not the newline: that would be a line merge
        line[offset] ^= 1 << bit
        lines[index] = bytes(line)
        first = index + 1
    elif edit == "delete":
        del lines[index]
        first = index + 1
    elif edit == "duplicate":
        lines.insert(index + 1, lines[index])
        first = index + 2
    else:
        lines[index], lines[index + 1] = lines[index + 1], lines[index]
        first = index + 1
    path = _with_records(archive_bytes, b"".join(lines), tmp_path)
    report = verify_archive(path, [KEY.public_bytes])
    assert not report.ok
    assert report.problem.seq == first, (edit, str(report.problem))
    # On two processes: the same verdict, the same first bad record.
    assert verify_archive(path, [KEY.public_bytes], workers=2, parallel_min=1).problem == report.problem


CANONICAL_SCRIPT = """
import sys, datetime, hashlib
from audit.canonical import canonical, utc_text
moment = datetime.datetime(2026, 3, 29, 0, 59, 59, 123456, tzinfo=datetime.timezone.utc)
body = {"z": 1, "a": [1.5, 1e21, 0.1, -0.0, 10**15], "é": "Zoë – 50 €", "when": utc_text(moment.astimezone())}
sys.stdout.write(hashlib.sha256(canonical(body)).hexdigest())
"""


def test_canonical_encoding_is_the_same_bytes_in_every_process_and_timezone():
    root = Path(__file__).resolve().parent.parent
    digests = set()
    for zone in ("UTC", "Europe/Paris", "America/Los_Angeles", "Asia/Kolkata", "Pacific/Chatham"):
        env = {**os.environ, "TZ": zone, "PYTHONHASHSEED": str(len(zone)), "PYTHONPATH": str(root), "LC_ALL": "C"}
        digests.add(subprocess.run([sys.executable, "-c", CANONICAL_SCRIPT], env=env, capture_output=True,
                                   text=True, check=True).stdout)
    assert len(digests) == 1
