"""`circuit settle`: the batch workflow from the command line, on the test database."""

from __future__ import annotations

import asyncio
from datetime import datetime, timezone
from pathlib import Path

import pytest
import xmlschema

from api.cli import main
from fixtures_settlement import make_settlement_scheme
from ledger.database import create_engine
from settlement.fees import create_rule

XSD = Path(__file__).parent / "data" / "pain.001.001.09.xsd"


async def _seed(database_url: str):
    engine = create_engine(database_url)
    try:
        scheme = await make_settlement_scheme(engine)
        async with engine.begin() as conn:
            await create_rule(conn, issuer_id=scheme.issuer_id, actor="test", rate_bp=790, programme_id=scheme.gift.id)
        merchant_id = await scheme.merchant()
        await scheme.take(merchant_id, scheme.gift, 100_000, datetime(2026, 11, 9, tzinfo=timezone.utc))
        return scheme, merchant_id
    finally:
        await engine.dispose()


def circuit(capsys, *argv: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exited:
        main(list(argv))
    captured = capsys.readouterr()
    return exited.value.code, captured.out, captured.err


def test_prepare_approve_export_mark_paid_and_return_from_the_command_line(database_url, monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("DATABASE_URL", database_url)
    scheme, merchant_id = asyncio.run(_seed(database_url))
    operator, approver = scheme.emails[scheme.operator_id], scheme.emails[scheme.approver_id]

    code, out, _ = circuit(capsys, "settle", "prepare", "--period", "2026-11", "--user", operator,
                           "--issuer", str(scheme.issuer_id))
    assert code == 0 and '"payout_cents": 90520' in out
    batch = out.split()[1]
    code, _, err = circuit(capsys, "settle", "approve", "--batch", batch, "--user", operator)
    assert code == 2 and "same_approver" in err
    code, out, _ = circuit(capsys, "settle", "approve", "--batch", batch, "--user", approver)
    assert code == 0 and out.strip().endswith("approved")
    code, out, _ = circuit(capsys, "settle", "export", "--batch", batch, "--user", approver, "--out", str(tmp_path))
    assert code == 0
    xmlschema.XMLSchema(str(XSD)).validate((tmp_path / f"batch-{batch}.pain.001.xml").read_text())
    assert "90520" in (tmp_path / f"batch-{batch}.csv").read_text()
    code, out, _ = circuit(capsys, "settle", "mark-paid", "--batch", batch, "--user", approver)
    assert code == 0 and out.strip().endswith("paid")
    code, out, _ = circuit(capsys, "settle", "return", "--batch", batch, "--merchant", str(merchant_id),
                           "--reason", "AC01", "--user", approver)
    assert code == 0 and "90520 cents back" in out
    code, out, _ = circuit(capsys, "check")
    assert code == 0 and out.startswith("OK")
