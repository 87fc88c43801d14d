"""Alembic environment: migrations always run on a connection handed in by ledger.database.migrate."""

from alembic import context

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations with `circuit migrate`, which supplies the connection")

context.configure(connection=connection, transaction_per_migration=True)
with context.begin_transaction():
    context.run_migrations()
