"""The migrations make exactly the models' schema, on SQLite and PostgreSQL.

Each test gets an empty database of its own: a new SQLite file, or a new
PostgreSQL schema (reached, like ``postgres_url``, through ``search_path``).
"""

from __future__ import annotations

import multiprocessing
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from conftest import BACKENDS, POSTGRES_URL
from sqlalchemy.engine import Connection, make_url

from broker.errors import ConfigurationError
from broker.storage import job_counts, migrate
from broker.storage.tables import create_schema, engine_for, metadata, open_session

DDL = re.compile(r"^\s*(CREATE|ALTER|DROP)\b", re.IGNORECASE)


@pytest.fixture(params=BACKENDS)
def empty_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty database: no tables, no migration record."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'migrations.sqlite3'}"
        yield url
        engine_for(url).dispose()
        return
    request.getfixturevalue("postgres_url")  # skips, or fails under CI, when the server is down
    schema = f"topchef_migrate_{uuid.uuid4().hex[:12]}"
    server = sa.create_engine(
        make_url(POSTGRES_URL).set(drivername="postgresql+psycopg"), poolclass=sa.pool.NullPool
    )
    with server.begin() as connection:
        connection.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    url = make_url(POSTGRES_URL).update_query_dict({"options": f"-csearch_path={schema}"})
    url_text = url.render_as_string(hide_password=False)
    yield url_text
    engine_for(url_text).dispose()
    with server.begin() as connection:
        connection.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))


def schema_differences(url: str) -> list[Any]:
    """What differs between the database's schema and ``broker.storage.tables.metadata``.

    Alembic compares tables, columns, types, nullability, indexes and unique
    constraints, but not a foreign key's ON DELETE nor a partial index's
    condition: those are compared here from reflection.
    """
    with engine_for(url).connect() as connection:
        context = MigrationContext.configure(
            connection, opts={"compare_type": True, "compare_server_default": True}
        )
        differences: list[Any] = list(compare_metadata(context, metadata))
        differences += _foreign_key_differences(connection)
        differences += _partial_index_differences(connection)
    return differences


def _foreign_key_differences(connection: Connection) -> list[Any]:
    inspector = sa.inspect(connection)
    differences = []
    for table in _present(inspector):
        reflected = {
            tuple(fk["constrained_columns"]): fk["options"].get("ondelete")
            for fk in inspector.get_foreign_keys(table.name)
        }
        for constraint in table.foreign_key_constraints:
            columns = tuple(constraint.column_keys)
            if reflected.get(columns) != constraint.ondelete:
                differences.append(("ondelete", table.name, columns, reflected.get(columns)))
    return differences


def _partial_index_differences(connection: Connection) -> list[Any]:
    dialect = connection.dialect.name
    inspector = sa.inspect(connection)
    differences = []
    for table in _present(inspector):
        reflected = {
            index["name"]: index.get("dialect_options", {}).get(f"{dialect}_where")
            for index in inspector.get_indexes(table.name)
        }
        for index in table.indexes:
            wanted = index.dialect_options[dialect].get("where")
            if _condition(reflected.get(index.name)) != _condition(wanted):
                differences.append(("where", index.name, reflected.get(index.name), wanted))
    return differences


def _present(inspector: sa.Inspector) -> list[sa.Table]:
    """The models' tables that the database has (Alembic reports the others missing)."""
    existing = set(inspector.get_table_names())
    return [table for table in metadata.sorted_tables if table.name in existing]


def _condition(clause: object) -> str | None:
    """A WHERE clause without the parentheses, spacing and casts (``::text``) reflection adds."""
    return None if clause is None else re.sub(r"[()\s]|::\w+", "", str(clause)).lower()


def test_upgrade_from_empty_makes_the_models_schema(empty_url: str) -> None:
    assert migrate.current(empty_url) is None

    migrate.upgrade(empty_url)

    assert migrate.current(empty_url) == migrate.head()
    assert schema_differences(empty_url) == []


def test_the_comparison_sees_what_alembic_alone_would_miss(empty_url: str) -> None:
    """A schema without ON DELETE CASCADE and the outbox's condition is reported."""
    with engine_for(empty_url).begin() as connection:
        connection.execute(sa.text("CREATE TABLE services (id INTEGER PRIMARY KEY)"))
        connection.execute(
            sa.text(
                "CREATE TABLE jobs (id INTEGER PRIMARY KEY, published_at INTEGER, "
                "date_submitted INTEGER, service_id INTEGER REFERENCES services (id))"
            )
        )
        connection.execute(sa.text("CREATE INDEX ix_jobs_unpublished ON jobs (date_submitted)"))

    # Alembic's own findings about columns come as lists; the rest are tuples.
    differences = schema_differences(empty_url)
    kinds = {difference[0] for difference in differences if isinstance(difference, tuple)}

    assert {"ondelete", "where"} <= kinds


def test_upgrading_again_changes_nothing(empty_url: str) -> None:
    migrate.upgrade(empty_url)
    statements: list[str] = []

    def record(_connection: Any, _cursor: Any, statement: str, *_: Any) -> None:
        statements.append(statement)

    engine = engine_for(empty_url)
    sa.event.listen(engine, "before_cursor_execute", record)
    try:
        migrate.upgrade(empty_url)
    finally:
        sa.event.remove(engine, "before_cursor_execute", record)

    assert statements  # it did look
    assert [statement for statement in statements if DDL.match(statement)] == []
    assert migrate.current(empty_url) == migrate.head()


def test_a_database_made_by_create_schema_is_stamped_and_keeps_its_rows(empty_url: str) -> None:
    create_schema(empty_url)
    _add_service(empty_url, "Kept")
    assert migrate.current(empty_url) is None

    migrate.upgrade(empty_url)

    assert migrate.current(empty_url) == migrate.head()
    assert schema_differences(empty_url) == []
    with open_session(empty_url) as session:
        names = session.execute(sa.text("SELECT name FROM services")).scalars().all()
    assert names == ["Kept"]


@pytest.mark.slow  # starts three processes
def test_processes_starting_together_migrate_once(empty_url: str) -> None:
    """Mirror, beat and the API start at once and each upgrades: one migrates, none fails."""
    code = "import sys; from broker.storage.migrate import upgrade; upgrade(sys.argv[1])"
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", code, empty_url],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        for _ in range(3)
    ]
    outputs = [process.communicate(timeout=120)[0].decode() for process in processes]

    assert [process.returncode for process in processes] == [0, 0, 0], outputs
    assert migrate.current(empty_url) == migrate.head()
    assert schema_differences(empty_url) == []


def test_downgrade_removes_every_table(empty_url: str) -> None:
    migrate.upgrade(empty_url)

    with engine_for(empty_url).begin() as connection:
        command.downgrade(migrate.alembic_config(connection), "base")

    with engine_for(empty_url).connect() as connection:
        assert set(sa.inspect(connection).get_table_names()) <= {"alembic_version"}
    assert migrate.current(empty_url) is None


def _triggers(url: str) -> dict[str, str]:
    """The database's triggers (and, on PostgreSQL, functions: ``name()``) and their SQL."""
    with engine_for(url).connect() as connection:
        if connection.dialect.name == "sqlite":
            query = "SELECT name, sql FROM sqlite_master WHERE type = 'trigger'"
        else:
            query = """SELECT tgname, pg_get_triggerdef(pg_trigger.oid) FROM pg_trigger
                JOIN pg_class ON pg_class.oid = tgrelid
                WHERE relnamespace = current_schema()::regnamespace AND NOT tgisinternal
              UNION ALL
              SELECT proname || '()', pg_get_functiondef(oid) FROM pg_proc
                WHERE pronamespace = current_schema()::regnamespace"""
        return dict(connection.execute(sa.text(query)).all())


def test_the_migrations_make_the_same_job_count_triggers_as_create_schema(empty_url: str) -> None:
    """Alembic does not compare triggers: here they are, by name and by definition."""
    dialect = make_url(empty_url).get_backend_name()
    migrate.upgrade(empty_url)
    migrated = _triggers(empty_url)

    names = set(job_counts.TRIGGERS[dialect])
    functions = {f"{name}()" for name in names} if dialect == "postgresql" else set()
    assert set(migrated) == names | functions

    with engine_for(empty_url).begin() as connection:
        command.downgrade(migrate.alembic_config(connection), "0001")
    assert _triggers(empty_url) == {}
    with engine_for(empty_url).begin() as connection:
        command.downgrade(migrate.alembic_config(connection), "base")
    create_schema(empty_url)
    assert _triggers(empty_url) == migrated


@pytest.mark.parametrize("recorded", [True, False], ids=["migrated", "create_schema"])
def test_jobs_from_before_the_counts_are_counted_by_the_migration(
    empty_url: str, recorded: bool
) -> None:
    """A database at 0001 (migrated, or made by a ``create_schema`` of then) gets its counts."""
    with engine_for(empty_url).begin() as connection:
        command.upgrade(migrate.alembic_config(connection), migrate.BASELINE)
        if not recorded:  # the baseline's tables, as create_schema made them: no record
            connection.execute(sa.text("DROP TABLE alembic_version"))
    oven, fridge, _empty = (_add_service(empty_url, name) for name in ("oven", "fridge", "lamp"))
    _add_jobs(empty_url, {oven: 3, fridge: 2})

    migrate.upgrade(empty_url)

    assert migrate.current(empty_url) == migrate.head()
    assert schema_differences(empty_url) == []
    assert _counts(empty_url) == {oven: 3, fridge: 2}
    _add_jobs(empty_url, {oven: 1, fridge: 4})  # the triggers took over
    assert _counts(empty_url) == {oven: 4, fridge: 6}


def test_some_tables_without_a_migration_record_are_refused(empty_url: str) -> None:
    metadata.tables["services"].create(engine_for(empty_url))

    with pytest.raises(ConfigurationError, match="not jobs"):
        migrate.upgrade(empty_url)


def test_a_database_from_a_newer_topchef_is_refused(empty_url: str) -> None:
    migrate.upgrade(empty_url)
    with engine_for(empty_url).begin() as connection:
        connection.execute(sa.text("UPDATE alembic_version SET version_num = '9999'"))

    with pytest.raises(ConfigurationError, match="revision 9999"):
        migrate.upgrade(empty_url)


def _add_service(url: str, name: str) -> uuid.UUID:
    now = datetime.now(UTC)
    service_id = uuid.uuid4()
    with open_session(url) as session:
        session.execute(
            metadata.tables["services"].insert(),
            {
                "id": service_id,
                "name": name,
                "description": "",
                "job_registration_schema": {},
                "job_result_schema": {},
                "timeout": 30.0,
                "is_service_available": False,
                "last_checked_in": now,
                "worker_loss_policy": "fail",
                "max_attempts": 3,
                "created_at": now,
            },
        )
        session.commit()
    return service_id


def _add_jobs(url: str, jobs: dict[uuid.UUID, int]) -> None:
    """Insert ``jobs[service]`` jobs for each service, in one statement."""
    now = datetime.now(UTC)
    rows = [
        {
            "id": uuid.uuid4(),
            "service_id": service_id,
            "status": "REGISTERED",
            "parameters": {},
            "attempts": 0,
            "date_submitted": now,
            "version": 1,
        }
        for service_id, count in jobs.items()
        for _ in range(count)
    ]
    with engine_for(url).begin() as connection:
        connection.execute(metadata.tables["jobs"].insert().values(rows))


def _counts(url: str) -> dict[uuid.UUID, int]:
    """The kept counts, checked against ``COUNT(*)``."""
    counts, jobs = metadata.tables["job_counts"], metadata.tables["jobs"]
    with engine_for(url).connect() as connection:
        summed = sa.select(counts.c.service_id, sa.func.sum(counts.c.jobs))
        kept = {
            key: int(jobs) for key, jobs in connection.execute(summed.group_by(counts.c.service_id))
        }
        counted = sa.select(jobs.c.service_id, sa.func.count()).group_by(jobs.c.service_id)
        assert kept == dict(connection.execute(counted).all())
    return kept


def _open_and_count(url: str, start: Any, answers: Any) -> None:
    engine = engine_for(url)  # made before the start: connecting is what races
    start.wait()
    try:
        with engine.connect() as connection:
            mode = connection.execute(sa.text("PRAGMA journal_mode")).scalar_one()
        answers.put(mode)
    except Exception as error:  # the answer is what the parent counts
        answers.put(repr(error))


def test_processes_opening_one_new_sqlite_file_at_once_all_get_in(tmp_path: Path) -> None:
    """Every process switches a fresh file to WAL; SQLite refuses a racing one outright.

    Found by CI: readers started together on an empty file, one answered
    "database is locked" although the busy timeout was 30 s.
    """
    context = multiprocessing.get_context("fork")
    failures = []
    for round_ in range(30):
        path = tmp_path / f"fresh{round_}.sqlite3"
        path.touch()
        answers = context.Queue()
        start = context.Barrier(6)
        children = [
            context.Process(target=_open_and_count, args=(f"sqlite:///{path}", start, answers))
            for _ in range(6)
        ]
        for child in children:
            child.start()
        modes = [answers.get(timeout=60) for _ in children]
        for child in children:
            child.join()
        failures += [mode for mode in modes if mode != "wal"]
    assert failures == []
