"""Each service's number of jobs, kept by the database itself.

``COUNT(*)`` over a service's jobs reads every one of them (~10 ms at 100,000
rows, whatever the plan), so ``len(service.jobs)`` sums the service's few rows
of ``job_counts`` instead. Triggers on ``jobs`` keep that sum exact for every
writer: the ORM, the producer's bulk Core insert, the HTTP gateway, a
benchmark's ``INSERT … SELECT``, raw SQL. A service without a row has no jobs.

- PostgreSQL: statement-level triggers over transition tables, so a
  10,000-row ``INSERT`` costs one upsert per service, not 10,000;
  ``TRUNCATE jobs`` empties the counts too.
- SQLite: row-level triggers (SQLite has no statement-level ones).
- A job moving to another service (``UPDATE jobs SET service_id``, which
  TopChef never does) moves its count, through a row-level trigger that fires
  only when ``service_id`` is assigned, so status updates do not pay for it.

The price is a lock: the first job a transaction adds to a service locks one
of that service's count rows until the transaction ends. On PostgreSQL a
service has up to ``SLOTS`` rows, and a transaction adds to the one its
connection's backend picks (``pg_backend_pid() % SLOTS``), so producers
submitting to one service at once seldom wait for each other: twenty HTTP
clients submitting to one instrument queued on a single row from each
``INSERT`` to its ``COMMIT``. Removals take from the service's first row; a row
may go below zero, the sum never does. One statement locks its services' rows
in service order, but two transactions adding to the same services in
opposite orders, one statement per service, can deadlock (which PostgreSQL
reports by failing one of them). SQLite lets one writer at a time in anyway,
and keeps one row per service (slot 0). A rolled-back insert rolls its count
back with it.

The functions run with the ``search_path`` they were created with, so they
update the ``job_counts`` next to their ``jobs`` whoever inserts. Migration
``0002`` and ``0009`` keep their own copies of this SQL, as migrations must; the
tests check that the migrations make the same triggers.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Connection

__all__ = ["CREATE", "DROP", "SLOTS", "TRIGGERS", "install"]

#: Count rows a service may have on PostgreSQL (written in the SQL below).
SLOTS = 16

#: The triggers on ``jobs`` that keep the counts, by dialect; on PostgreSQL
#: each runs the function of its own name.
TRIGGERS = {
    "postgresql": ("job_counts_add", "job_counts_remove", "job_counts_move", "job_counts_clear"),
    "sqlite": ("job_counts_add", "job_counts_remove", "job_counts_move"),
}

_PL = "RETURNS trigger LANGUAGE plpgsql SET search_path FROM CURRENT AS"

_POSTGRESQL = (
    # Locks are taken in service order, so that two multi-service inserts
    # cannot deadlock on each other's count rows.
    f"""CREATE FUNCTION job_counts_add() {_PL} $$
BEGIN
  INSERT INTO job_counts AS counts (service_id, slot, jobs)
  SELECT service_id, mod(pg_backend_pid(), {SLOTS}), count(*) FROM added_jobs
  GROUP BY service_id ORDER BY service_id
  ON CONFLICT (service_id, slot) DO UPDATE SET jobs = counts.jobs + EXCLUDED.jobs;
  RETURN NULL;
END $$""",
    """CREATE TRIGGER job_counts_add AFTER INSERT ON jobs
  REFERENCING NEW TABLE AS added_jobs
  FOR EACH STATEMENT EXECUTE FUNCTION job_counts_add()""",
    # A plain UPDATE: the service may be going too (ON DELETE CASCADE), and
    # an upsert would bring its count row back.
    f"""CREATE FUNCTION job_counts_remove() {_PL} $$
BEGIN
  UPDATE job_counts AS counts SET jobs = counts.jobs - gone.jobs
  FROM (SELECT service_id, count(*) AS jobs FROM removed_jobs GROUP BY service_id) AS gone
  WHERE counts.service_id = gone.service_id
    AND counts.slot = (SELECT min(slot) FROM job_counts WHERE service_id = gone.service_id);
  RETURN NULL;
END $$""",
    """CREATE TRIGGER job_counts_remove AFTER DELETE ON jobs
  REFERENCING OLD TABLE AS removed_jobs
  FOR EACH STATEMENT EXECUTE FUNCTION job_counts_remove()""",
    # Transition tables cannot go with a column list: a statement-level
    # trigger would fire on every status update, this one only on moves.
    f"""CREATE FUNCTION job_counts_move() {_PL} $$
BEGIN
  UPDATE job_counts SET jobs = jobs - 1 WHERE service_id = OLD.service_id
    AND slot = (SELECT min(slot) FROM job_counts WHERE service_id = OLD.service_id);
  INSERT INTO job_counts AS counts (service_id, slot, jobs)
  VALUES (NEW.service_id, mod(pg_backend_pid(), {SLOTS}), 1)
  ON CONFLICT (service_id, slot) DO UPDATE SET jobs = counts.jobs + 1;
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

#: The statements that make the triggers, by dialect (``jobs`` must exist).
CREATE = {"postgresql": _POSTGRESQL, "sqlite": _SQLITE}

#: The statements that remove them, by dialect.
DROP = {
    "postgresql": tuple(
        statement
        for name in TRIGGERS["postgresql"]
        for statement in (
            f"DROP TRIGGER IF EXISTS {name} ON jobs",
            f"DROP FUNCTION IF EXISTS {name}()",
        )
    ),
    "sqlite": tuple(f"DROP TRIGGER IF EXISTS {name}" for name in TRIGGERS["sqlite"]),
}


def install(counts: sa.Table, jobs: sa.Table) -> None:
    """Make creating (dropping) ``counts`` create (drop) its triggers on ``jobs``.

    ``counts`` is made to depend on ``jobs`` so that ``create_all`` creates it
    second and the triggers find their table.
    """
    counts.add_is_dependent_on(jobs)
    event.listen(counts, "after_create", _run(CREATE))
    event.listen(counts, "before_drop", _run(DROP))


def _run(statements: dict[str, tuple[str, ...]]) -> Callable[..., None]:
    """A DDL event listener that runs the statements of the connection's dialect."""

    def listener(_table: sa.Table, connection: Connection, **_: Any) -> None:
        for statement in statements.get(connection.dialect.name, ()):
            connection.exec_driver_sql(statement)

    return listener
