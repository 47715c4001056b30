"""Service controls: hold and resume, priorities, at most so many running.

``services.held_at`` / ``held_by`` / ``held_reason`` are a hold (NULL
``held_at``: not held); ``services.max_running`` caps how many of the service's
jobs run at once (NULL: no cap). SQL is the truth of both: beat writes them to
Redis, where claims read them, on every tick. ``jobs.priority`` is kept on the
row so that every re-publish (the outbox, beat's recoveries) sends a job to the
priority list it was submitted to.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-03
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_TIME = sa.DateTime(timezone=True)


def upgrade() -> None:
    # Plain ADD COLUMNs: SQLite's batch mode would copy the table and lose its triggers.
    op.add_column("services", sa.Column("held_at", _TIME, nullable=True))
    op.add_column("services", sa.Column("held_by", sa.String(255), nullable=True))
    op.add_column("services", sa.Column("held_reason", sa.Text(), nullable=True))
    op.add_column("services", sa.Column("max_running", sa.Integer(), nullable=True))
    # Existing jobs were all of one priority: the default.
    op.add_column(
        "jobs", sa.Column("priority", sa.Integer(), nullable=False, server_default=sa.text("5"))
    )


def downgrade() -> None:
    op.drop_column("jobs", "priority")
    for column in ("max_running", "held_reason", "held_by", "held_at"):
        op.drop_column("services", column)
