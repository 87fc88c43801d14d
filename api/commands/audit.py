"""`circuit audit`: seal and close, export a signed archive, verify (offline or live), rotate keys."""

from __future__ import annotations

import argparse
import json
import sys
from datetime import date
from pathlib import Path

from api.commands.core import migrated_engine
from api.settings import audit_signing_key
from audit.archive import EmptyPeriod, export_archive, parse_public_key, verify_archive
from audit.chain import rotate_key, seal, seal_all
from audit.keys import load_key
from audit.live import problem_text, verify_database
from audit.verify import Report


def register(subparsers: argparse._SubParsersAction) -> None:
    audit = subparsers.add_parser("audit", help="the inalterable audit chain: close, export, verify, rotate keys")
    commands = audit.add_subparsers(dest="audit_command", required=True)

    commands.add_parser("close", help="seal pending events and write every missing daily, monthly and yearly "
                        "closure (Europe/Paris calendar)").set_defaults(run=_close)

    export = commands.add_parser("export", help="write a signed archive of the records of a period (Paris days)")
    export.add_argument("--from", dest="first_day", type=date.fromisoformat, required=True, help="YYYY-MM-DD")
    export.add_argument("--to", dest="last_day", type=date.fromisoformat, required=True, help="YYYY-MM-DD, inclusive")
    export.add_argument("-o", "--output", type=Path, required=True)
    export.set_defaults(run=_export)

    verify = commands.add_parser("verify", help="verify an archive offline (no database, no server), or the live "
                                 "chain against the ledger with --database")
    verify.add_argument("file", nargs="?", type=Path, help="an archive written by `circuit audit export`")
    verify.add_argument("--database", action="store_true", help="verify the live chain and the ledger instead")
    verify.add_argument("--key", action="append", default=[],
                        help="a trusted Ed25519 public key (hex, or a file with hex or PEM); repeatable")
    verify.set_defaults(run=_verify)

    rotate = commands.add_parser("rotate-key", help="introduce a new signing key, endorsed by the current one")
    rotate.add_argument("--new-key", type=Path, required=True, help="PEM file of the new Ed25519 private key")
    rotate.set_defaults(run=_rotate)

    commands.add_parser("public-key", help="print the public key of this server's signing key (hex)").set_defaults(
        run=lambda args: print(audit_signing_key().public_bytes.hex()))


async def _close(args: argparse.Namespace) -> int:
    key = audit_signing_key()
    async with migrated_engine() as engine:
        size = await seal_all(engine, key)
        async with engine.begin() as conn:
            result = await seal(conn, key, close_periods=True)
    print(f"chain at {max(size, result.size)} records; {result.closures} closures written")
    return 0


async def _export(args: argparse.Namespace) -> int:
    key = audit_signing_key()
    async with migrated_engine() as engine:
        await seal_all(engine, key, force_checkpoint=True)
        try:
            async with engine.begin() as conn:
                manifest = await export_archive(conn, key, args.output, args.first_day, args.last_day, actor="cli")
        except EmptyPeriod as error:
            print(f"refused (empty_period): {error}", file=sys.stderr)
            return 2
    print(f"wrote {args.output}: records {manifest['first_seq']}..{manifest['last_seq']} "
          f"({manifest['records']}), signed by key {manifest['key_id']}")
    return 0


def _print_report(report: Report, what: str) -> None:
    checkpoint = report.last_checkpoint
    print(f"OK: {what}: {report.records} records (seq {report.first_seq}..{report.last_seq}), "
          f"{report.first_ts} to {report.last_ts}")
    if checkpoint:
        print(f"last checkpoint: size {checkpoint['size']} at {checkpoint['ts']}, key {checkpoint['key_id']}")
    print(f"trusted keys: {', '.join(sorted(report.trusted_keys)) or 'none'}")
    for closure in report.closures:
        print(f"closure {closure['kind']} {closure['period']}: {closure['records']} records, "
              f"totals re-computed {json.dumps(closure['totals'], sort_keys=True)}")


async def _verify(args: argparse.Namespace) -> int:
    pinned = [parse_public_key(value) for value in args.key] or None
    if args.database:
        key = audit_signing_key()
        async with migrated_engine() as engine:
            await seal_all(engine, key)
            async with engine.connect() as conn:
                report = await verify_database(conn, pinned or [key.public_bytes])
        if not report.ok:
            print(f"FAILED: {problem_text(report)}", file=sys.stderr)
            return 1
        _print_report(report.chain, "live chain")
        print(f"ledger: {report.transfers} transfers, each recorded exactly once ({report.pending_events} events "
              "waiting to be sealed)")
        return 0
    if args.file is None:
        print("name an archive file, or use --database", file=sys.stderr)
        return 2
    report = verify_archive(args.file, pinned)
    if not report.ok:
        print(f"FAILED: {report.problem}", file=sys.stderr)
        return 1
    if not pinned:
        print("note: keys taken from the archive itself; pin a key you trust with --key")
    _print_report(report, str(args.file))
    return 0


async def _rotate(args: argparse.Namespace) -> int:
    old, new = audit_signing_key(), load_key(args.new_key)
    async with migrated_engine() as engine:
        async with engine.begin() as conn:
            seq = await rotate_key(conn, old, new)
    print(f"key {new.key_id} introduced at record {seq}, endorsed by {old.key_id}. Point CIRCUIT_AUDIT_KEY_FILE "
          f"at {args.new_key} and restart the service.")
    return 0
