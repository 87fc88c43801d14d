"""`circuit settle`: prepare, approve, reject, export, mark paid, mark a transfer returned.

The CLI has the database's trust, not a login: ``--user`` names the back-office user the step is
recorded for, and the domain checks that user's role (and that the approver is not the preparer).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from sqlalchemy import text

from api.commands.core import migrated_engine
from ledger.errors import InvalidInput, NotFound
from settlement import batches


def register(subparsers: argparse._SubParsersAction) -> None:
    settle = subparsers.add_parser("settle", help="merchant payouts: prepare, approve, export (SEPA), mark paid")
    commands = settle.add_subparsers(dest="settle_command", required=True)

    def command(name: str, help: str, run, *, batch: bool = True):
        parser = commands.add_parser(name, help=help)
        parser.add_argument("--user", required=True, help="email of the operator or approver doing this")
        if batch:
            parser.add_argument("--batch", type=int, required=True, help="batch id")
        parser.set_defaults(run=run)
        return parser

    prepare = command("prepare", "build (or return) the draft batch of a period", _prepare, batch=False)
    prepare.add_argument("--period", required=True, help="2026-11 (month), 2026-W48 (week) or 2026-11-15 (day)")
    prepare.add_argument("--issuer", type=int, help="issuer id (default: the user's issuer, or the only one)")
    command("approve", "approve a draft batch (not by the person who prepared it)", _approve)
    reject = command("reject", "send a batch back to draft, with a reason", _reject)
    reject.add_argument("--reason", required=True)
    export = command("export", "move the money in the ledger and write the SEPA pain.001 file and the CSV", _export)
    export.add_argument("--out", type=Path, default=Path("."), help="directory for the files (default: here)")
    command("mark-paid", "record the bank's confirmation that the batch was paid", _mark_paid)
    returned = command("return", "record a transfer the bank sent back (wrong IBAN…)", _return)
    returned.add_argument("--merchant", type=int, required=True, help="merchant id")
    returned.add_argument("--reason", required=True)
    command("show", "print a batch: totals and payments (JSON)", _show)


async def _user(conn, email: str):
    row = (await conn.execute(text("SELECT id, issuer_id FROM users WHERE email = lower(:e) AND disabled_at IS NULL"),
                              {"e": email})).one_or_none()
    if row is None:
        raise NotFound("no active user has this email", message_fr="Aucun utilisateur actif n'a cet e-mail.", email=email)
    return row


def _summary(batch: batches.Batch) -> str:
    return f"batch {batch.id} {batch.period} (issuer {batch.issuer_id}): {batch.status}"


async def _prepare(args: argparse.Namespace) -> int:
    async with migrated_engine() as engine:
        async with engine.begin() as conn:
            user = await _user(conn, args.user)
            issuer_id = args.issuer or user.issuer_id
            if issuer_id is None:
                issuers = (await conn.execute(text("SELECT id FROM issuers ORDER BY id LIMIT 2"))).scalars().all()
                if len(issuers) != 1:
                    raise InvalidInput("several issuers: name one with --issuer",
                                       message_fr="Plusieurs émetteurs : indiquez-en un avec --issuer.")
                issuer_id = issuers[0]
            batch = await batches.prepare(conn, issuer_id=issuer_id, period=args.period, user_id=user.id)
            totals = batches.batch_totals(await batches.batch_lines(conn, batch.id),
                                     await batches.batch_payments(conn, batch.id))
    print(_summary(batch))
    print(json.dumps(totals))
    return 0


async def _step(args: argparse.Namespace, step, **kwargs):
    async with migrated_engine() as engine:
        async with engine.begin() as conn:
            user = await _user(conn, args.user)
            return await step(conn, batch_id=args.batch, user_id=user.id, **kwargs)


async def _approve(args: argparse.Namespace) -> int:
    print(_summary(await _step(args, batches.approve)))
    return 0


async def _reject(args: argparse.Namespace) -> int:
    print(_summary(await _step(args, batches.reject, reason=args.reason)))
    return 0


async def _export(args: argparse.Namespace) -> int:
    files = await _step(args, batches.export)
    args.out.mkdir(parents=True, exist_ok=True)
    for kind, content in sorted(files.items()):
        path = args.out / f"batch-{args.batch}.{'pain.001.xml' if kind == 'pain.001' else 'csv'}"
        path.write_bytes(content)
        print(f"wrote {path}")
    return 0


async def _mark_paid(args: argparse.Namespace) -> int:
    print(_summary(await _step(args, batches.mark_paid)))
    return 0


async def _return(args: argparse.Namespace) -> int:
    payment = await _step(args, batches.mark_returned, merchant_id=args.merchant, reason=args.reason)
    print(f"batch {args.batch}: transfer to merchant {payment.merchant_id} returned; "
          f"{payment.payout_cents} cents back on its balance for the next batch")
    return 0


async def _show(args: argparse.Namespace) -> int:
    async with migrated_engine() as engine:
        async with engine.connect() as conn:
            await _user(conn, args.user)
            batch = await batches.get_batch(conn, args.batch)
            lines = await batches.batch_lines(conn, args.batch)
            payments = await batches.batch_payments(conn, args.batch)
    print(json.dumps({"batch": _summary(batch), "totals": batches.batch_totals(lines, payments),
                      "payments": [{"merchant_id": p.merchant_id, "payout_cents": p.payout_cents,
                                    "carried_out_cents": p.carried_out_cents, "status": p.status}
                                   for p in payments]}, indent=2))
    return 0
