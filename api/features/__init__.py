"""Capabilities plug into the app, the CLI and the demo here, without editing a shared file.

Each module in this package is one capability (vouchers, merchants, settlement, wallets…)
and may define any of:

- ``ROUTES``: Litestar route handlers (controllers, routers) to mount;
- ``PUBLIC_PATHS``: path regexes served without a token (static pages, key sets, webhooks);
- ``JOBS``: ``async def job(engine, stop: asyncio.Event)`` periodic tasks started by ``serve``;
- ``ERROR_STATUS``: ``{code: http_status}`` for the capability's domain error codes (422 if absent);
- ``COMMANDS``: ``register(subparsers)`` functions adding ``circuit`` sub-commands;
- ``DEMO_ORDER`` (int, lower first) and ``async def seed_demo(conn, demo: dict) -> str | None``:
  adds to the demo scheme; ``demo`` carries what earlier seeders made (issuer, programmes,
  merchants, wallets, users) and the returned line is printed for a person to read.

Modules are found by name, in alphabetical order; nothing needs registering.
"""

from __future__ import annotations

import importlib
import pkgutil
from functools import cache
from types import ModuleType


@cache
def features() -> tuple[ModuleType, ...]:
    return tuple(
        importlib.import_module(f"{__name__}.{info.name}")
        for info in sorted(pkgutil.iter_modules(__path__), key=lambda info: info.name)
        if not info.name.startswith("_")
    )


def collect(attribute: str) -> list:
    """Every feature's list ``attribute``, concatenated."""
    return [item for module in features() for item in getattr(module, attribute, ())]
