"""Resubmissions: a job resubmitted from another is linked to it.

``jobs.resubmitted_from`` names the original; the original's resubmissions are
the jobs that name it, found by a partial index that holds only those rows, so
a sweep of ten thousand ordinary jobs pays nothing for it. The link is a record
of where a job came from, not a constraint: deleting an original by hand leaves
its resubmissions, and what they were resubmitted from, as they were.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-03
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # A plain ADD COLUMN: SQLite's batch mode would copy the table and lose its triggers.
    op.add_column("jobs", sa.Column("resubmitted_from", sa.Uuid(), nullable=True))
    op.create_index(
        "ix_jobs_resubmitted_from",
        "jobs",
        ["resubmitted_from"],
        postgresql_where=sa.text("resubmitted_from IS NOT NULL"),
        sqlite_where=sa.text("resubmitted_from IS NOT NULL"),
    )


def downgrade() -> None:
    op.drop_index("ix_jobs_resubmitted_from", table_name="jobs")
    op.drop_column("jobs", "resubmitted_from")
