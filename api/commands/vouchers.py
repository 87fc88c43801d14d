"""``circuit vouchers``: expire due vouchers, rotate the token signing key."""

from __future__ import annotations

import argparse

from ledger import vouchers as voucher_domain


def register(subparsers: argparse._SubParsersAction) -> None:
    vouchers = subparsers.add_parser("vouchers", help="gift vouchers: expire, rotate the signing key")
    commands = vouchers.add_subparsers(dest="vouchers_command", required=True)
    commands.add_parser("expire", help="move the balance of every expired voucher to its programme's breakage "
                        "account (ledger transfers and audit events)").set_defaults(run=_expire_command)
    commands.add_parser("rotate-key", help="retire the token signing key and start a new one (old tokens stay "
                        "verifiable)").set_defaults(run=_rotate_command)


async def _expire_command(args: argparse.Namespace) -> int:
    from api.commands.core import migrated_engine

    async with migrated_engine() as engine:
        total = 0
        while True:
            async with engine.begin() as conn:
                run = await voucher_domain.expire_due(conn, actor="cli:vouchers.expire")
            total += run.vouchers
            print(f"expired {run.vouchers} vouchers, {run.moved_cents / 100:.2f} moved to breakage")
            if run.vouchers < voucher_domain.EXPIRY_BATCH_MAX:
                break
    return 0


async def _rotate_command(args: argparse.Namespace) -> int:
    from api.commands.core import migrated_engine

    async with migrated_engine() as engine:
        async with engine.begin() as conn:
            key = await voucher_domain.rotate_key(conn, actor="cli:vouchers.rotate-key")
    print(f"voucher tokens are now signed with key {key.key_id}")
    return 0
