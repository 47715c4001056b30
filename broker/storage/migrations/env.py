"""Alembic's entry point: migrate the connection ``broker.storage.migrate`` hands over.

``broker.storage.migrate`` opens the connection (with its lock) and passes it in
``config.attributes``, so every engine setting of ``broker.storage.tables`` (the
SQLite pragmas, the psycopg driver) applies to migrations too.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy.engine import Connection

from broker.storage.tables import metadata

connection = context.config.attributes.get("connection")
if not isinstance(connection, Connection):
    raise RuntimeError(
        "run TopChef's migrations through broker.storage.migrate, not the alembic command"
    )

context.configure(
    connection=connection,
    target_metadata=metadata,
    # SQLite cannot ALTER most things: later migrations copy and swap tables.
    render_as_batch=connection.dialect.name == "sqlite",
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
