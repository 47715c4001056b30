"""A service's job count spread over several rows, summed on read.

``job_counts`` gains a ``slot`` in its key: on PostgreSQL each transaction adds
to the row its backend picks (``pg_backend_pid() % 16``), so producers
submitting to one service at once no longer queue on one row's lock. The
existing rows become slot 0, and keep their counts. SQLite keeps one row per
service (slot 0), with triggers that name it.

The trigger SQL is copied here, as in ``0002``, so that this revision keeps
making the same triggers whatever ``broker.storage.job_counts`` becomes.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-04
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_PL = "RETURNS trigger LANGUAGE plpgsql SET search_path FROM CURRENT AS"

_POSTGRESQL = (
    f"""CREATE OR REPLACE FUNCTION job_counts_add() {_PL} $$
BEGIN
  INSERT INTO job_counts AS counts (service_id, slot, jobs)
  SELECT service_id, mod(pg_backend_pid(), 16), count(*) FROM added_jobs
  GROUP BY service_id ORDER BY service_id
  ON CONFLICT (service_id, slot) DO UPDATE SET jobs = counts.jobs + EXCLUDED.jobs;
  RETURN NULL;
END $$""",
    f"""CREATE OR REPLACE FUNCTION job_counts_remove() {_PL} $$
BEGIN
  UPDATE job_counts AS counts SET jobs = counts.jobs - gone.jobs
  FROM (SELECT service_id, count(*) AS jobs FROM removed_jobs GROUP BY service_id) AS gone
  WHERE counts.service_id = gone.service_id
    AND counts.slot = (SELECT min(slot) FROM job_counts WHERE service_id = gone.service_id);
  RETURN NULL;
END $$""",
    f"""CREATE OR REPLACE FUNCTION job_counts_move() {_PL} $$
BEGIN
  UPDATE job_counts SET jobs = jobs - 1 WHERE service_id = OLD.service_id
    AND slot = (SELECT min(slot) FROM job_counts WHERE service_id = OLD.service_id);
  INSERT INTO job_counts AS counts (service_id, slot, jobs)
  VALUES (NEW.service_id, mod(pg_backend_pid(), 16), 1)
  ON CONFLICT (service_id, slot) DO UPDATE SET jobs = counts.jobs + 1;
  RETURN NULL;
END $$""",
)

#: 0002's functions, which the downgrade puts back.
_POSTGRESQL_BEFORE = (
    f"""CREATE OR REPLACE FUNCTION job_counts_add() {_PL} $$
BEGIN
  INSERT INTO job_counts AS counts (service_id, jobs)
  SELECT service_id, count(*) FROM added_jobs GROUP BY service_id ORDER BY service_id
  ON CONFLICT (service_id) DO UPDATE SET jobs = counts.jobs + EXCLUDED.jobs;
  RETURN NULL;
END $$""",
    f"""CREATE OR REPLACE FUNCTION job_counts_remove() {_PL} $$
BEGIN
  UPDATE job_counts AS counts SET jobs = counts.jobs - gone.jobs
  FROM (SELECT service_id, count(*) AS jobs FROM removed_jobs GROUP BY service_id) AS gone
  WHERE counts.service_id = gone.service_id;
  RETURN NULL;
END $$""",
    f"""CREATE OR REPLACE FUNCTION job_counts_move() {_PL} $$
BEGIN
  UPDATE job_counts SET jobs = jobs - 1 WHERE service_id = OLD.service_id;
  INSERT INTO job_counts AS counts (service_id, jobs) VALUES (NEW.service_id, 1)
  ON CONFLICT (service_id) DO UPDATE SET jobs = counts.jobs + 1;
  RETURN NULL;
END $$""",
)

_SQLITE = (
    """CREATE TRIGGER job_counts_add AFTER INSERT ON jobs
BEGIN
  INSERT INTO job_counts (service_id, slot, jobs) VALUES (NEW.service_id, 0, 1)
  ON CONFLICT (service_id, slot) DO UPDATE SET jobs = jobs + 1;
END""",
    """CREATE TRIGGER job_counts_remove AFTER DELETE ON jobs
BEGIN
  UPDATE job_counts SET jobs = jobs - 1 WHERE service_id = OLD.service_id AND slot = 0;
END""",
    """CREATE TRIGGER job_counts_move AFTER UPDATE OF service_id ON jobs
  WHEN OLD.service_id IS NOT NEW.service_id
BEGIN
  UPDATE job_counts SET jobs = jobs - 1 WHERE service_id = OLD.service_id AND slot = 0;
  INSERT INTO job_counts (service_id, slot, jobs) VALUES (NEW.service_id, 0, 1)
  ON CONFLICT (service_id, slot) DO UPDATE SET jobs = jobs + 1;
END""",
)

#: 0002's SQLite triggers, which the downgrade puts back.
_SQLITE_BEFORE = (
    """CREATE TRIGGER job_counts_add AFTER INSERT ON jobs
BEGIN
  INSERT INTO job_counts (service_id, jobs) VALUES (NEW.service_id, 1)
  ON CONFLICT (service_id) DO UPDATE SET jobs = jobs + 1;
END""",
    """CREATE TRIGGER job_counts_remove AFTER DELETE ON jobs
BEGIN
  UPDATE job_counts SET jobs = jobs - 1 WHERE service_id = OLD.service_id;
END""",
    """CREATE TRIGGER job_counts_move AFTER UPDATE OF service_id ON jobs
  WHEN OLD.service_id IS NOT NEW.service_id
BEGIN
  UPDATE job_counts SET jobs = jobs - 1 WHERE service_id = OLD.service_id;
  INSERT INTO job_counts (service_id, jobs) VALUES (NEW.service_id, 1)
  ON CONFLICT (service_id) DO UPDATE SET jobs = jobs + 1;
END""",
)

_SQLITE_NAMES = ("job_counts_add", "job_counts_remove", "job_counts_move")


def upgrade() -> None:
    if _dialect() == "sqlite":
        _copy_counts(["service_id", "slot"], "service_id, 0, jobs")
        statements = _SQLITE
    else:
        op.add_column(
            "job_counts",
            sa.Column("slot", sa.SmallInteger(), nullable=False, server_default=sa.text("0")),
        )
        op.drop_constraint("job_counts_pkey", "job_counts", type_="primary")
        op.create_primary_key("job_counts_pkey", "job_counts", ["service_id", "slot"])
        statements = _POSTGRESQL
    for statement in statements:
        op.execute(statement)


def downgrade() -> None:
    if _dialect() == "sqlite":
        _copy_counts(["service_id"], "service_id, sum(jobs)", group=True)
        statements = _SQLITE_BEFORE
    else:
        op.execute("LOCK TABLE jobs IN SHARE MODE")  # no count may change meanwhile
        # Each service's rows summed into its slot 0, the one row 0002 kept.
        op.execute(
            "INSERT INTO job_counts (service_id, slot, jobs)"
            " SELECT DISTINCT service_id, 0, 0 FROM job_counts"
            " ON CONFLICT (service_id, slot) DO NOTHING"
        )
        op.execute(
            "UPDATE job_counts SET jobs = (SELECT sum(jobs) FROM job_counts AS every"
            " WHERE every.service_id = job_counts.service_id) WHERE slot = 0"
        )
        op.execute("DELETE FROM job_counts WHERE slot <> 0")
        op.drop_constraint("job_counts_pkey", "job_counts", type_="primary")
        op.create_primary_key("job_counts_pkey", "job_counts", ["service_id"])
        op.drop_column("job_counts", "slot")
        statements = _POSTGRESQL_BEFORE
    for statement in statements:
        op.execute(statement)


def _copy_counts(key: list[str], columns: str, group: bool = False) -> None:
    """SQLite: ``job_counts`` made again with ``key``, its rows copied as ``columns``.

    SQLite cannot change a primary key in place. The triggers that name the
    table go first, so that nothing refers to it while it is replaced.
    """
    for name in _SQLITE_NAMES:
        op.execute(f"DROP TRIGGER IF EXISTS {name}")
    slot = [sa.Column("slot", sa.SmallInteger(), nullable=False, server_default=sa.text("0"))]
    op.create_table(
        "job_counts_copy",
        sa.Column("service_id", sa.Uuid(), nullable=False),
        *(slot if "slot" in key else []),
        sa.Column("jobs", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(["service_id"], ["services.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint(*key),
    )
    names = ", ".join([*key, "jobs"])
    grouping = " GROUP BY service_id" if group else ""
    op.execute(f"INSERT INTO job_counts_copy ({names}) SELECT {columns} FROM job_counts{grouping}")
    op.drop_table("job_counts")
    op.rename_table("job_counts_copy", "job_counts")


def _dialect() -> str:
    return op.get_bind().dialect.name
