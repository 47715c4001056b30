"""Job controls: abort, not before, retries.

``jobs.not_before`` holds a job back until its time (a producer's
``not_before``, or the backoff of a retry); such a job stays in the outbox
(``published_at IS NULL``) and beat publishes it once due. The outbox's own
index leaves waiting jobs out, and ``ix_jobs_due`` finds the due ones, so
neither of beat's scans reads the jobs that wait. ``services.retries``,
``retry_on`` and ``retry_backoff`` are a service's opt-in to retries.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-03
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_JSON = sa.JSON().with_variant(JSONB(), "postgresql")
_TIME = sa.DateTime(timezone=True)
_UNPUBLISHED = "published_at IS NULL"
_WAITING = "published_at IS NULL AND not_before IS NOT NULL"
_UNPUBLISHED_NOW = "published_at IS NULL AND not_before IS NULL"


def upgrade() -> None:
    # Plain ADD COLUMNs: SQLite's batch mode would copy the tables and lose their triggers.
    op.add_column("jobs", sa.Column("not_before", _TIME, nullable=True))
    op.add_column(
        "services", sa.Column("retries", sa.Boolean(), nullable=False, server_default=sa.false())
    )
    op.add_column(
        "services", sa.Column("retry_on", _JSON, nullable=False, server_default=sa.text("'[]'"))
    )
    op.add_column(
        "services",
        sa.Column("retry_backoff", sa.Float(), nullable=False, server_default=sa.text("1.0")),
    )
    _index_unpublished(_UNPUBLISHED_NOW)
    op.create_index(
        "ix_jobs_due",
        "jobs",
        ["not_before"],
        postgresql_where=sa.text(_WAITING),
        sqlite_where=sa.text(_WAITING),
    )


def downgrade() -> None:
    op.drop_index("ix_jobs_due", table_name="jobs")
    _index_unpublished(_UNPUBLISHED)
    op.drop_column("services", "retry_backoff")
    op.drop_column("services", "retry_on")
    op.drop_column("services", "retries")
    op.drop_column("jobs", "not_before")


def _index_unpublished(where: str) -> None:
    op.drop_index("ix_jobs_unpublished", table_name="jobs")
    op.create_index(
        "ix_jobs_unpublished",
        "jobs",
        ["date_submitted"],
        postgresql_where=sa.text(where),
        sqlite_where=sa.text(where),
    )
