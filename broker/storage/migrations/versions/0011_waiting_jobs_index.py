"""An index of each service's waiting jobs in the order they are handed out.

HTTP workers take a service's REGISTERED jobs highest priority first, then
oldest (the priority rule Celery workers follow); ``ix_jobs_waiting`` holds
only REGISTERED jobs, by service, priority and age, so the highest priority
waiting is one probe and its oldest jobs a range scan, however many jobs the
service has.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-07
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

WAITING = "status = 'REGISTERED'"


def upgrade() -> None:
    op.create_index(
        "ix_jobs_waiting",
        "jobs",
        ["service_id", "priority", "date_submitted", "id"],
        postgresql_where=sa.text(WAITING),
        sqlite_where=sa.text(WAITING),
    )


def downgrade() -> None:
    op.drop_index("ix_jobs_waiting", table_name="jobs")
