"""Each service's job count, kept by triggers (see ``broker.storage.job_counts``).

The trigger SQL is copied here rather than imported, so that this revision
keeps making the same triggers whatever ``broker.storage.job_counts`` becomes; the
tests check that the two agree at head.

The triggers are created before the counts are backfilled, in the one
transaction the migration runs in. On PostgreSQL ``CREATE TRIGGER`` locks
``jobs`` against writes until the commit, so every job is counted exactly
once: those committed before, by the backfill; those inserted after, by the
triggers. On SQLite the migration holds the database's write lock throughout.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_PL = "RETURNS trigger LANGUAGE plpgsql SET search_path FROM CURRENT AS"

_TRIGGERS = {
    "postgresql": (
        f"""CREATE FUNCTION job_counts_add() {_PL} $$
BEGIN
  INSERT INTO job_counts AS counts (service_id, jobs)
  SELECT service_id, count(*) FROM added_jobs GROUP BY service_id ORDER BY service_id
  ON CONFLICT (service_id) DO UPDATE SET jobs = counts.jobs + EXCLUDED.jobs;
  RETURN NULL;
END $$""",
        """CREATE TRIGGER job_counts_add AFTER INSERT ON jobs
  REFERENCING NEW TABLE AS added_jobs
  FOR EACH STATEMENT EXECUTE FUNCTION job_counts_add()""",
        f"""CREATE FUNCTION job_counts_remove() {_PL} $$
BEGIN
  UPDATE job_counts AS counts SET jobs = counts.jobs - gone.jobs
  FROM (SELECT service_id, count(*) AS jobs FROM removed_jobs GROUP BY service_id) AS gone
  WHERE counts.service_id = gone.service_id;
  RETURN NULL;
END $$""",
        """CREATE TRIGGER job_counts_remove AFTER DELETE ON jobs
  REFERENCING OLD TABLE AS removed_jobs
  FOR EACH STATEMENT EXECUTE FUNCTION job_counts_remove()""",
        f"""CREATE FUNCTION job_counts_move() {_PL} $$
BEGIN
  UPDATE job_counts SET jobs = jobs - 1 WHERE service_id = OLD.service_id;
  INSERT INTO job_counts AS counts (service_id, jobs) VALUES (NEW.service_id, 1)
  ON CONFLICT (service_id) DO UPDATE SET jobs = counts.jobs + 1;
  RETURN NULL;
END $$""",
        """CREATE TRIGGER job_counts_move AFTER UPDATE OF service_id ON jobs
  FOR EACH ROW WHEN (OLD.service_id IS DISTINCT FROM NEW.service_id)
  EXECUTE FUNCTION job_counts_move()""",
        f"""CREATE FUNCTION job_counts_clear() {_PL} $$
BEGIN
  DELETE FROM job_counts;
  RETURN NULL;
END $$""",
        """CREATE TRIGGER job_counts_clear AFTER TRUNCATE ON jobs
  FOR EACH STATEMENT EXECUTE FUNCTION job_counts_clear()""",
    ),
    "sqlite": (
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
    ),
}

_NAMES = ("job_counts_add", "job_counts_remove", "job_counts_move", "job_counts_clear")


def upgrade() -> None:
    op.create_table(
        "job_counts",
        sa.Column("service_id", sa.Uuid(), nullable=False),
        sa.Column("jobs", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(["service_id"], ["services.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("service_id"),
    )
    for statement in _TRIGGERS[_dialect()]:
        op.execute(statement)
    op.execute(
        "INSERT INTO job_counts (service_id, jobs)"
        " SELECT service_id, count(*) FROM jobs GROUP BY service_id"
    )


def downgrade() -> None:
    postgresql = _dialect() == "postgresql"
    for name in _NAMES:
        op.execute(f"DROP TRIGGER IF EXISTS {name}" + (" ON jobs" if postgresql else ""))
        if postgresql:
            op.execute(f"DROP FUNCTION IF EXISTS {name}()")
    op.drop_table("job_counts")


def _dialect() -> str:
    return op.get_bind().dialect.name
