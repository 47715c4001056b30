"""Schema migrations: bring a database to the schema this version of TopChef expects.

``upgrade`` is safe to call on every start, from several processes at once: it
runs in one transaction holding a lock (an advisory lock on PostgreSQL, the
write lock on SQLite), so the first caller migrates and the others find the
schema up to date. Alembic is configured here, not from an ``alembic.ini``, so
the scripts ship inside the package.

To write the next revision, change ``broker/database.py`` and let Alembic draft
it against a database at the current head::

    from alembic import command
    from broker.storage.migrate import alembic_config
    from broker.storage.tables import engine_for

    with engine_for(url).begin() as connection:
        command.revision(alembic_config(connection), "what changed", autogenerate=True,
                         rev_id="0002")

then read and fix the draft (Alembic cannot see renames or partial-index
conditions).
"""

from __future__ import annotations

import threading
import zlib
from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Connection

from broker.errors import ConfigurationError, SQLAlchemyError
from broker.storage.tables import engine_for, metadata

__all__ = ["alembic_config", "check_schema", "current", "head", "upgrade"]

SCRIPTS = Path(__file__).parent / "migrations"

#: The revision whose schema ``create_schema`` made before TopChef had
#: migrations: such databases are stamped with it, then upgraded from there.
BASELINE = "0001"
#: The tables of ``BASELINE``.
BASELINE_TABLES = ("services", "jobs")

#: Alembic's ``context`` and ``op`` are process-wide proxies, so two threads
#: migrating at once (even different databases) would cross their wires.
_ONE_AT_A_TIME = threading.Lock()


def alembic_config(connection: Connection | None = None) -> Config:
    """Alembic's configuration for TopChef's scripts, migrating ``connection``."""
    config = Config()
    config.set_main_option("script_location", str(SCRIPTS).replace("%", "%%"))
    config.attributes["connection"] = connection
    return config


def head() -> str:
    """The revision this version of TopChef expects."""
    revision = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert revision is not None  # the scripts ship with the package
    return revision


def current(url: str) -> str | None:
    """The database's revision; None for an empty database or one made by ``create_schema``."""
    with engine_for(url).connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def check_schema(url: str) -> None:
    """Refuse, in words, a database that a reader cannot read: absent, empty or outdated.

    Never creates anything: a SQLite file that does not exist is reported, not
    made (connecting would make it), so that a mistyped URL or a command run in
    the wrong directory leaves no empty database behind.
    """
    address = sa.engine.make_url(url)
    shown = address.render_as_string(hide_password=True)
    file = address.database if address.get_backend_name() == "sqlite" else None
    if file not in (None, "", ":memory:") and not Path(str(file)).is_file():
        raise ConfigurationError(
            f"no database at {file}: check TOPCHEF_DATABASE_URL, "
            "or create it with `topchef db upgrade`"
        )
    try:
        with engine_for(url).connect() as connection:
            existing = set(sa.inspect(connection).get_table_names())
            revision = MigrationContext.configure(connection).get_current_revision()
    except (sa.exc.OperationalError, sa.exc.InterfaceError) as error:
        raise SQLAlchemyError(error) from error
    if not set(BASELINE_TABLES) <= existing:
        raise ConfigurationError(
            f"the database {shown} has no TopChef schema: run `topchef db upgrade`"
        )
    if revision is not None and revision != head():
        _check_known(revision)
        raise ConfigurationError(
            f"the database {shown} is at schema revision {revision}, this TopChef "
            f"expects {head()}: run `topchef db upgrade`"
        )


def upgrade(url: str) -> None:
    """Migrate the database at ``url`` to ``head()``."""
    try:
        with _ONE_AT_A_TIME, engine_for(url).begin() as connection:
            _lock(connection)
            config = alembic_config(connection)
            revision = MigrationContext.configure(connection).get_current_revision()
            if revision is None and (made := _made_by_create_schema(connection)):
                command.stamp(config, made)
            elif revision is not None:
                _check_known(revision)
            command.upgrade(config, "head")
    except sa.exc.OperationalError as error:
        raise SQLAlchemyError(error) from error


def _lock(connection: Connection) -> None:
    """Hold, until the transaction ends, the lock that makes migrating one at a time."""
    if connection.dialect.name == "postgresql":
        # One lock per schema, so that databases in other schemas do not wait.
        schema = connection.execute(sa.text("SELECT current_schema()")).scalar_one()
        key = zlib.crc32(f"topchef.migrate:{schema}".encode())
        connection.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": key})
    elif connection.dialect.name == "sqlite":
        # pysqlite would begin only at the first write; take the write lock now.
        connection.exec_driver_sql("BEGIN IMMEDIATE")


def _made_by_create_schema(connection: Connection) -> str | None:
    """The revision of TopChef's tables found without Alembic's record, if any.

    ``create_schema`` makes the schema of the TopChef it belongs to: all of
    today's tables (tests, benchmarks) are the head's; only the baseline's are
    from before migrations. Raises if not even those are all there.
    """
    existing = set(sa.inspect(connection).get_table_names())
    if not existing & set(metadata.tables):
        return None
    if existing >= set(metadata.tables):
        return head()
    if missing := [table for table in BASELINE_TABLES if table not in existing]:
        raise ConfigurationError(
            f"the database has some of TopChef's tables but not {', '.join(missing)}, "
            "and no migration record: restore it or start from an empty database"
        )
    return BASELINE


def _check_known(revision: str) -> None:
    """Refuse, in words, a database migrated by a newer TopChef."""
    scripts = ScriptDirectory.from_config(alembic_config())
    known = {script.revision for script in scripts.walk_revisions()}
    if revision not in known:
        raise ConfigurationError(
            f"the database is at schema revision {revision}, which this version of "
            f"TopChef does not know (its newest is {head()}): upgrade TopChef"
        )
