"""The initial schema: services and their jobs.

The types are spelled out rather than imported from ``broker.storage.tables`` so
that this revision keeps creating the same tables whatever the models become.
``UTCDateTime`` is a ``DateTime(timezone=True)`` in the database. Constraints
are left unnamed, as ``create_schema`` leaves them, so that a database it made
and then stamped is the same as a migrated one.

Revision ID: 0001
Revises:
Create Date: 2025-01-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_JSON = sa.JSON().with_variant(JSONB(), "postgresql")
_TIME = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "services",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("job_registration_schema", _JSON, nullable=False),
        sa.Column("job_result_schema", _JSON, nullable=False),
        sa.Column("timeout", sa.Float(), nullable=False),
        sa.Column("is_service_available", sa.Boolean(), nullable=False),
        sa.Column("last_checked_in", _TIME, nullable=False),
        sa.Column("timed_out_at", _TIME, nullable=True),
        sa.Column("worker_loss_policy", sa.String(16), nullable=False),
        sa.Column("max_attempts", sa.Integer(), nullable=False),
        sa.Column("created_at", _TIME, nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("name"),
    )
    op.create_table(
        "jobs",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("service_id", sa.Uuid(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("parameters", _JSON, nullable=False),
        sa.Column("results", _JSON, nullable=True),
        sa.Column("detail", sa.Text(), nullable=True),
        sa.Column("progress", sa.Float(), nullable=True),
        sa.Column("progress_message", sa.Text(), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("worker", sa.String(255), nullable=True),
        sa.Column("date_submitted", _TIME, nullable=False),
        sa.Column("date_started", _TIME, nullable=True),
        sa.Column("date_finished", _TIME, nullable=True),
        sa.Column("published_at", _TIME, nullable=True),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(["service_id"], ["services.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(
        "ix_jobs_service_status_submitted", "jobs", ["service_id", "status", "date_submitted"]
    )
    op.create_index("ix_jobs_status_submitted", "jobs", ["status", "date_submitted"])
    op.create_index("ix_jobs_submitted", "jobs", ["date_submitted"])
    # The outbox: committed jobs whose message has not left yet.
    op.create_index(
        "ix_jobs_unpublished",
        "jobs",
        ["date_submitted"],
        postgresql_where=sa.text("published_at IS NULL"),
        sqlite_where=sa.text("published_at IS NULL"),
    )


def downgrade() -> None:
    op.drop_table("jobs")  # its indexes go with it
    op.drop_table("services")
