"""Enrolling and revoking workers' credentials, where the database is.

The operator enrolls a credential (``topchef workers enroll NAME``): its secret
key is recorded here, for the mirror, and written to a file for the lab PC
(``broker.trust.credentials``). Revoking a name (``topchef workers revoke
NAME``) makes the mirror refuse every report authenticated with it from then
on; a revoked name is never enrolled again, so that no new key takes over what
its reports said.

The core has a credential of its own, ``core``, for the reports the HTTP
gateway appends for its HTTP workers. Its key is kept in the database alone,
which only the core reaches, and made the first time a gateway needs it.
"""

from __future__ import annotations

import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from broker.errors import ConfigurationError, ConflictError
from broker.models import lifecycle
from broker.models.moves import Move
from broker.storage.tables import JobHolderRow, JobRow, WorkerCredentialRow, database_now
from broker.trust.credentials import (
    CORE,
    STACK,
    Credential,
    CredentialError,
    check_name,
    read,
    write,
)
from broker.trust.reports import ReportKey

Status = lifecycle.Status


@dataclass(frozen=True, slots=True)
class Enrolled:
    """A credential as SQL records it (``topchef workers list``)."""

    name: str
    #: The key's fingerprint (``ReportKey.fingerprint``), never the key.
    fingerprint: str
    enrolled_at: datetime
    revoked_at: datetime | None


def enroll(session: Session, name: str, key: ReportKey) -> Enrolled:
    """Record ``name`` with its secret ``key``; refuse a name enrolled (or revoked) before."""
    check_name(name)
    if name == CORE:
        raise CredentialError(name, f"{CORE!r} is the core's own credential: choose another name")
    existing = session.get(WorkerCredentialRow, name)
    if existing is not None:
        state = "revoked" if existing.revoked_at is not None else "enrolled"
        raise ConflictError(
            f"a credential named {name!r} is {state} already: choose another name"
            + ("" if existing.revoked_at is not None else f", or revoke {name!r} first")
        )
    row = WorkerCredentialRow(name=name, report_key=key.text, enrolled_at=database_now(session))
    session.add(row)
    session.flush()
    return _enrolled(row)


def ensure_enrolled(session: Session, name: str, key: ReportKey) -> None:
    """Enroll ``name`` with ``key`` unless it is already, with that key (``topchef up``)."""
    row = session.get(WorkerCredentialRow, name)
    if row is None:
        enroll(session, name, key)
    elif ReportKey(row.report_key) != key or row.revoked_at is not None:
        raise CredentialError(
            name,
            f"the credential {name!r} in the database is revoked, or has another key than "
            "the file's: enroll a new credential under another name",
        )


def revoke(session: Session, name: str) -> Enrolled:
    """Revoke ``name`` now: the mirror refuses its reports from this commit on."""
    if name == CORE:
        raise CredentialError(name, f"{CORE!r} is the core's own credential, not a worker's")
    row = session.get(WorkerCredentialRow, name)
    if row is None:
        raise CredentialError(name, f"no credential named {name!r} is enrolled")
    if row.revoked_at is None:
        row.revoked_at = database_now(session)
    return _enrolled(row)


def fail_held(session: Session, name: str, by: str) -> list[uuid.UUID]:
    """End as ERROR every running job whose attempt ``name`` holds; their ids.

    Its worker's outcome would be refused from now on: left WORKING, such a job
    would wait for an outcome that can never be recorded. ``by``: who revoked.
    """
    held = session.execute(
        sa.select(JobRow.id)
        .join(JobHolderRow, JobHolderRow.job_id == JobRow.id)
        .where(JobHolderRow.credential == name)
        .where(JobHolderRow.attempt == JobRow.attempts)
        .where(JobRow.status == Status.WORKING.value)
    ).scalars()
    now = database_now(session)
    detail = f"the credential of its worker ({name!r}) was revoked while it ran"
    moves = [Move(job, now, {"detail": detail}, by=by) for job in held]
    lifecycle.advance(session, Status.ERROR, moves)
    return [move.job_id for move in moves]


def enrolled(session: Session) -> list[Enrolled]:
    """Every credential, enrolled or revoked, by name."""
    rows = session.scalars(sa.select(WorkerCredentialRow).order_by(WorkerCredentialRow.name))
    return [_enrolled(row) for row in rows]


def _enrolled(row: WorkerCredentialRow) -> Enrolled:
    return Enrolled(
        row.name, ReportKey(row.report_key).fingerprint, row.enrolled_at, row.revoked_at
    )


def core(session: Session) -> Credential:
    """The core's credential, made and recorded the first time it is asked for.

    Two processes asking at once both insert; the first one's stands and the
    other reads it back.
    """
    secret = session.scalar(
        sa.select(WorkerCredentialRow.report_key).where(WorkerCredentialRow.name == CORE)
    )
    if secret is None:
        dialect = postgresql if session.get_bind().dialect.name == "postgresql" else sqlite
        session.execute(
            dialect.insert(WorkerCredentialRow)
            .values(
                name=CORE,
                report_key=ReportKey.generate().text,
                enrolled_at=database_now(session),
            )
            .on_conflict_do_nothing()
        )
        secret = session.scalar(
            sa.select(WorkerCredentialRow.report_key).where(WorkerCredentialRow.name == CORE)
        )
    if secret is None:
        raise ConfigurationError("the core's credential has no key in the database")
    return Credential(CORE, ReportKey(secret))


def stack_credential(session: Session, path: Path) -> Path:
    """``path``, the file of the credential of a ``topchef up``'s workers, enrolled if need be."""
    if path.is_file():
        credential = read(path)
    else:
        # A name of its own: a stack started again without its file has a new key.
        credential = Credential(f"{STACK}-{secrets.token_hex(4)}", ReportKey.generate())
        write(path, credential)
    ensure_enrolled(session, credential.name, credential.key)
    return path
