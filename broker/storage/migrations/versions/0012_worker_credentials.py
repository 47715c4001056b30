"""Workers' credentials, and the credential that holds each attempt of a job.

``worker_credentials`` lists the names and secret report keys an operator
enrolled (``topchef workers enroll``), and when each was revoked; ``job_holders``
names, for each attempt of a job, the credential whose verified WORKING report
started it. The mirror applies a report only if that credential authenticated it.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-07
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_TIME = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "worker_credentials",
        sa.Column("name", sa.String(100), nullable=False),
        sa.Column("report_key", sa.String(64), nullable=False),
        sa.Column("enrolled_at", _TIME, nullable=False),
        sa.Column("revoked_at", _TIME, nullable=True),
        sa.PrimaryKeyConstraint("name"),
    )
    op.create_table(
        "job_holders",
        sa.Column("job_id", sa.Uuid(), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("credential", sa.String(100), nullable=False),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("job_id", "attempt"),
    )


def downgrade() -> None:
    op.drop_table("job_holders")
    op.drop_table("worker_credentials")
