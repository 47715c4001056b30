"""A service's own number of jobs per Celery message.

``services.jobs_per_message`` fixes how many of a ``submit_many``'s jobs share
one message; NULL, the default for every service, lets the producer choose
from the service's run times (``broker.producer.packing``).

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-04
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("services", sa.Column("jobs_per_message", sa.Integer(), nullable=True))


def downgrade() -> None:
    op.drop_column("services", "jobs_per_message")
