"""Late outcomes: a presumed loss can be corrected, a superseded attempt kept.

``jobs.presumed_lost_at`` marks an ERROR that beat set because the worker's
lease lapsed: the one terminal state that a late report of the same attempt may
still replace. ``job_attempts`` keeps an attempt that a later one superseded
(the ``requeue`` policy), and what it reported if its worker woke up after all.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_JSON = sa.JSON().with_variant(JSONB(), "postgresql")
_TIME = sa.DateTime(timezone=True)


def upgrade() -> None:
    # A plain ADD COLUMN: SQLite's batch mode would copy the table and lose its triggers.
    op.add_column("jobs", sa.Column("presumed_lost_at", _TIME, nullable=True))
    op.create_table(
        "job_attempts",
        sa.Column("job_id", sa.Uuid(), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("worker", sa.String(255), nullable=True),
        sa.Column("date_started", _TIME, nullable=True),
        sa.Column("superseded_at", _TIME, nullable=True),
        sa.Column("status", sa.String(16), nullable=True),
        sa.Column("results", _JSON, nullable=True),
        sa.Column("detail", sa.Text(), nullable=True),
        sa.Column("date_finished", _TIME, nullable=True),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("job_id", "attempt"),
    )


def downgrade() -> None:
    op.drop_table("job_attempts")
    op.drop_column("jobs", "presumed_lost_at")
