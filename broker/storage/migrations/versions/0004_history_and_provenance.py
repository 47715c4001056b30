"""History and provenance: every transition of a job, who submitted it, what ran it.

``job_transitions`` is the append-only history that ``lifecycle`` writes with
each compare-and-set; ``run_provenance`` names what ran a job (worker process,
handler module, code version, Python), once per worker process and module.
``jobs.submitted_by`` and ``services.schema_fingerprint`` say who submitted a
job and which schemas it was validated against; existing services get their
fingerprint computed here.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-03
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_JSON = sa.JSON().with_variant(JSONB(), "postgresql")
_TIME = sa.DateTime(timezone=True)


def upgrade() -> None:
    # Plain ADD COLUMNs: SQLite's batch mode would copy the tables and lose their triggers.
    op.add_column("services", sa.Column("schema_fingerprint", sa.String(64), nullable=True))
    op.add_column("jobs", sa.Column("submitted_by", sa.String(255), nullable=True))
    op.add_column("jobs", sa.Column("run_provenance", sa.String(32), nullable=True))
    op.add_column("job_attempts", sa.Column("run_provenance", sa.String(32), nullable=True))
    op.create_table(
        "job_transitions",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("job_id", sa.Uuid(), nullable=False),
        sa.Column("from_status", sa.String(16), nullable=False),
        sa.Column("to_status", sa.String(16), nullable=False),
        sa.Column("at", _TIME, nullable=False),
        sa.Column("by", sa.String(255), nullable=True),
        sa.Column("attempt", sa.Integer(), nullable=True),
        sa.Column("detail", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_job_transitions_job_id", "job_transitions", ["job_id"])
    op.create_table(
        "run_provenance",
        sa.Column("digest", sa.String(32), nullable=False),
        sa.Column("worker", sa.String(255), nullable=False),
        sa.Column("module", sa.String(255), nullable=False),
        sa.Column("code_version", sa.String(100), nullable=True),
        sa.Column("python", sa.String(100), nullable=False),
        sa.Column("recorded_at", _TIME, nullable=False),
        sa.PrimaryKeyConstraint("digest"),
    )
    _fingerprint_existing_services()


def _fingerprint_existing_services() -> None:
    """The fingerprint of each service created before this revision (spelled out here,
    as ``broker.contract.schema_fingerprint`` computes it today, so that this revision
    keeps doing the same whatever that module becomes)."""
    services = sa.table(
        "services",
        sa.column("id", sa.Uuid()),
        sa.column("job_registration_schema", _JSON),
        sa.column("job_result_schema", _JSON),
        sa.column("schema_fingerprint", sa.String(64)),
    )
    connection = op.get_bind()
    rows = connection.execute(
        sa.select(services.c.id, services.c.job_registration_schema, services.c.job_result_schema)
    ).all()
    for service_id, registration, result in rows:
        connection.execute(
            services.update()
            .where(services.c.id == service_id)
            .values(schema_fingerprint=_fingerprint(registration, result))
        )


def _fingerprint(registration: Any, result: Any) -> str:
    text = json.dumps(
        {"job_registration_schema": registration, "job_result_schema": result},
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=True,
    )
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()[:32]


def downgrade() -> None:
    op.drop_table("run_provenance")
    op.drop_index("ix_job_transitions_job_id", table_name="job_transitions")
    op.drop_table("job_transitions")
    op.drop_column("job_attempts", "run_provenance")
    op.drop_column("jobs", "run_provenance")
    op.drop_column("jobs", "submitted_by")
    op.drop_column("services", "schema_fingerprint")
