"""Test fixtures on real PostgreSQL.

One server per test session: ``DATABASE_URL`` if set (its user must be allowed to create
databases), otherwise an embedded pgserver in a temporary directory. The schema is
migrated once into a template database; every test module gets a fresh copy of it.

Fixtures: ``database_url`` and ``engine`` (per module), ``client`` (the Litestar app over
ASGI, per module), ``operator`` (an operator user and its Authorization header).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from pathlib import Path

import httpx
import pytest
import pytest_asyncio
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from ledger.database import asyncpg_url, create_engine, migrate, start_embedded_server

# Each capability keeps its shared fixtures in tests/fixtures_<capability>.py: found here.
pytest_plugins = sorted(f"fixtures_{path.stem.removeprefix('fixtures_')}"
                        for path in Path(__file__).parent.glob("fixtures_*.py"))


@pytest.fixture(scope="session")
def server_url():
    """A URL of the test server's maintenance database."""
    if os.environ.get("DATABASE_URL"):
        yield make_url(asyncpg_url(os.environ["DATABASE_URL"])).set(database="postgres").render_as_string(False)
        return
    directory = Path(tempfile.mkdtemp(prefix="circuit-test-"))
    server = start_embedded_server(directory / "pg")
    yield server.get_uri(database="postgres", driver="asyncpg")
    server.cleanup()
    shutil.rmtree(directory, ignore_errors=True)


async def _admin(server_url: str, statement: str) -> None:
    admin = create_async_engine(server_url, isolation_level="AUTOCOMMIT")
    try:
        async with admin.connect() as conn:
            await conn.execute(text(statement))
    finally:
        await admin.dispose()


def _url_of(server_url: str, database: str) -> str:
    return make_url(server_url).set(database=database).render_as_string(hide_password=False)


@pytest_asyncio.fixture(scope="session")
async def template_database(server_url: str) -> str:
    name = f"circuit_template_{uuid.uuid4().hex[:8]}"
    await _admin(server_url, f'CREATE DATABASE "{name}"')
    engine = create_engine(_url_of(server_url, name))
    try:
        await migrate(engine)
    finally:
        await engine.dispose()
    return name


@pytest_asyncio.fixture(scope="module")
async def database_url(server_url: str, template_database: str) -> str:
    name = f"circuit_test_{uuid.uuid4().hex[:10]}"
    await _admin(server_url, f'CREATE DATABASE "{name}" TEMPLATE "{template_database}"')
    return _url_of(server_url, name)


@pytest_asyncio.fixture(scope="module")
async def engine(database_url: str):
    engine = create_engine(database_url, pool_size=20, max_overflow=200)
    yield engine
    await engine.dispose()


@pytest_asyncio.fixture(scope="module")
async def client(engine: AsyncEngine):
    """HTTP requests through the whole Litestar app, on the test's own event loop."""
    from api.app import create_app

    transport = httpx.ASGITransport(app=create_app(engine=engine, background=False))
    async with httpx.AsyncClient(transport=transport, base_url="http://circuit.test") as client:
        yield client


@pytest_asyncio.fixture(scope="module")
async def operator(engine: AsyncEngine, client) -> dict[str, str]:
    """An operator user, signed in: the Authorization header to send."""
    from api.auth import create_user

    email = f"operator-{uuid.uuid4().hex[:6]}@circuit.test"
    async with engine.begin() as conn:
        await create_user(conn, email=email, password="correct horse battery", role="operator")
    response = await client.post("/auth/login", json={"email": email, "password": "correct horse battery"})
    assert response.status_code == 200, response.text
    return {"Authorization": f"Bearer {response.json()['token']}"}
