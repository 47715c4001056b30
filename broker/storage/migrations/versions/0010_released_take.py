"""The take of a job's claim last given back.

``jobs.released_take`` lets the mirror tell a report of a claim its holder
gave back (over HTTP) from one of the claim that runs now: each take of a
claim is numbered in Redis, and the WORKING or release report of a take at or
before the one given back moves nothing (``broker.models.lifecycle``). NULL
for every job until it is first given back.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-07
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("jobs", sa.Column("released_take", sa.Integer(), nullable=True))


def downgrade() -> None:
    op.drop_column("jobs", "released_take")
