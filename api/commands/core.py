"""Sub-commands every installation needs: serve, migrate, demo, check, users."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import os
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from sqlalchemy.ext.asyncio import AsyncEngine

from ledger.check import check_ledger
from ledger.database import create_engine, database_url, ensure_database, migrate


@asynccontextmanager
async def migrated_engine() -> AsyncIterator[AsyncEngine]:
    """The configured database, created if needed and migrated to the current schema."""
    url = database_url()
    await ensure_database(url)
    engine = create_engine(url)
    try:
        await migrate(engine)
        yield engine
    finally:
        await engine.dispose()


def register(subparsers: argparse._SubParsersAction) -> None:
    serve = subparsers.add_parser("serve", help="migrate, then serve the HTTP API (docs at /schema)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--demo", action="store_true", help="seed the demo scheme first if it is not there")
    serve.add_argument("--workers", type=int, default=1, help="uvicorn worker processes")
    serve.set_defaults(run=_serve)

    subparsers.add_parser("migrate", help="apply every pending schema migration").set_defaults(run=_migrate)

    demo = subparsers.add_parser(
        "demo", help="seed a demo scheme: an issuer, a local currency, a gift-voucher programme, "
        "merchants, wallets and users (does nothing if already seeded)",
    )
    demo.set_defaults(run=_demo)

    check = subparsers.add_parser(
        "check", help="verify the ledger's invariants: balanced transfers, balances equal to their "
        "postings, every unit summing to zero, circulation equal to the euro reserve",
    )
    check.set_defaults(run=_check)

    users = subparsers.add_parser("users", help="manage users").add_subparsers(dest="users_command", required=True)
    create = users.add_parser("create", help="create a user (asks for the password if not in CIRCUIT_PASSWORD)")
    create.add_argument("--email", required=True)
    create.add_argument("--role", required=True,
                        choices=["operator", "approver", "employer", "resident", "merchant_owner",
                                 "merchant_cashier", "auditor"])
    create.add_argument("--name", default="")
    create.add_argument("--issuer-id", type=int)
    create.add_argument("--merchant-id", type=int)
    create.set_defaults(run=_create_user)


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from api.app import create_app

    async def prepare() -> None:
        async with migrated_engine() as engine:
            if args.demo:
                from api.demo import seed_demo

                async with engine.begin() as conn:
                    print(await seed_demo(conn))

    asyncio.run(prepare())
    # uvicorn re-raises SIGTERM after its graceful shutdown; exiting normally instead lets the
    # atexit hooks run, which release this process's hold on the embedded database.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    # Workers are separate processes: they find the same database through the environment.
    os.environ.setdefault("DATABASE_URL", database_url())
    print(f"Circuit on http://{args.host}:{args.port}  (API docs: http://{args.host}:{args.port}/schema)")
    if args.workers > 1:
        uvicorn.run("api.app:create_app", factory=True, host=args.host, port=args.port,
                    workers=args.workers, log_level="warning")
    else:
        uvicorn.run(create_app(), host=args.host, port=args.port, log_level="warning")
    return 0


async def _migrate(args: argparse.Namespace) -> int:
    async with migrated_engine():
        print("database schema is current")
    return 0


async def _demo(args: argparse.Namespace) -> int:
    from api.demo import seed_demo

    async with migrated_engine() as engine:
        async with engine.begin() as conn:
            print(await seed_demo(conn))
    return 0


async def _check(args: argparse.Namespace) -> int:
    async with migrated_engine() as engine:
        async with engine.connect() as conn:
            report = await check_ledger(conn)
    if report.ok:
        print(f"OK: {report.transfers} transfers, {report.accounts} accounts; every invariant holds")
        return 0
    print(f"FAILED: {len(report.discrepancies)} discrepancies; first: {report.discrepancies[0]}", file=sys.stderr)
    for discrepancy in report.discrepancies[1:20]:
        print(f"  also: {discrepancy}", file=sys.stderr)
    return 1


async def _create_user(args: argparse.Namespace) -> int:
    from api.auth import create_user

    password = os.environ.get("CIRCUIT_PASSWORD") or getpass.getpass("password: ")
    async with migrated_engine() as engine:
        async with engine.begin() as conn:
            user_id = await create_user(
                conn, email=args.email, password=password, role=args.role, display_name=args.name,
                issuer_id=args.issuer_id, merchant_id=args.merchant_id,
            )
    print(f"user {user_id} created: {args.email} ({args.role})")
    return 0
