"""Who may report on a job: the credential holding its attempt, and no one else.

Anyone with the Redis password can append to the state stream, so the mirror
trusts an entry only for what its MAC proves (``broker.trust.reports``):

- every entry — a job's report, a check-in, a provenance — must be authenticated by a
  credential an operator enrolled and has not revoked, over its exact report;
- the first verified WORKING report of a job's attempt makes its credential
  that attempt's *holder*, recorded in SQL (``job_holders``) in the same
  transaction as the WORKING move; every later report on that attempt —
  progress, retry, release, its outcome, late or not — must come from the
  holder. A release by the holder ends its hold, so that the next take of
  the attempt starts a hold of its own.

Who may start holding a job nobody holds yet? No one in the core hands a job
to a worker (workers take their service's messages from a shared queue); the
job's claim in Redis records who took each take of it (``claim.lua``'s
``by:<take>``, from the signed WORKING it appends), and a WORKING starts a
hold only if its credential is the one that took that take. A WORKING appended
on the stream alone, for a job its credential never took, starts nothing; to
hold a job a lab PC must take its claim, which keeps every other worker from
running it. A compromised lab PC can therefore affect the jobs it took, as any
worker can, and no other: not a job another credential holds, not a finished
job, nothing once its credential is revoked. What it can still do with Redis
itself — overwrite a claim's fields before the mirror reads the take, so that
the run's own reports are set aside — is for Redis's access control to limit;
those reports are dead-lettered with their reason, never lost silently.

Everything refused is dead-lettered by the mirror with the reason given here.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Sequence
from typing import Any, NamedTuple

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.orm import Session

from broker.messaging.claims import Claims
from broker.mirror.admission import Reason
from broker.mirror.entries import Reading, Report, merged
from broker.models import lifecycle
from broker.storage.tables import JobHolderRow, JobRow, WorkerCredentialRow, ids_among
from broker.trust.reports import ReportKey, Signed, signed

Status = lifecycle.Status

#: The reasons this module refuses an entry for, one per rule.
REFUSALS = (
    Reason.UNSIGNED,
    Reason.FORGED,
    Reason.UNKNOWN_CREDENTIAL,
    Reason.REVOKED,
    Reason.NOT_HOLDER,
)
#: Each refusal's words begin with its rule's, which name its reason.
_REASONS = {
    "unsigned": Reason.UNSIGNED,
    "forged": Reason.FORGED,
    "unknown credential": Reason.UNKNOWN_CREDENTIAL,
    "revoked": Reason.REVOKED,
    "not the holder": Reason.NOT_HOLDER,
}
#: A job may start an attempt (be held anew) only in these states.
_STARTABLE = frozenset({Status.REGISTERED.value, Status.WORKING.value})
#: Keys already read, by their text: decoding costs more than a lookup.
_KEYS: dict[str, ReportKey] = {}
#: Rows asked for per query (SQLite binds at most a few thousand parameters).
_CHUNK = 500

Attempt = tuple[uuid.UUID, int]


class _Job(NamedTuple):
    service_id: uuid.UUID
    status: str
    attempts: int


def screen(session: Session, reading: Reading, claims: Claims) -> dict[uuid.UUID, uuid.UUID]:
    """Refuse every entry of ``reading`` that its MAC does not entitle; record new holders.

    ``claims`` reads the claims of the jobs whose attempt a WORKING report
    would start holding: the credential must be the one that took the claim.

    Refused job reports join ``reading.refused`` (the mirror applies none of
    them); refused check-ins and provenances leave the reading for it too.
    A report on a job SQL does not know, or of another service than the
    job's, is left to the mirror, which refuses it for that: the service of
    each reported job SQL knows is returned, read with the holders in one query.
    """
    every = [*reading.reports, *reading.every_check_in, *reading.provenances]
    if not every:
        return {}
    tags = {id(report): signed(report.fields) for report in every}
    names = {tag.name for tag in tags.values() if isinstance(tag, Signed)}
    keys = _keys(session, names)
    verdicts: dict[int, str | Signed] = {}

    def verdict(report: Report) -> str | Signed:
        found = verdicts.get(id(report))
        if found is None:
            found = verdicts[id(report)] = _verified(tags[id(report)], keys)
        return found

    refused: list[tuple[Report, str]] = []
    # Merged again from the verified alone: a forged check-in hides no genuine one.
    reading.check_ins.clear()
    for report in reading.every_check_in:
        if isinstance(reason := verdict(report), str):
            refused.append((report, f"{reason} (a check-in)"))
        else:
            service = report.message.service_id
            reading.check_ins[service] = merged(reading.check_ins.get(service), report)
    kept = []
    for report in reading.provenances:
        if isinstance(reason := verdict(report), str):
            refused.append((report, f"{reason} (a provenance)"))
        else:
            kept.append(report)
    reading.provenances[:] = kept
    jobs, held = _jobs(session, {report.message.job_id for report in reading.reports})  # type: ignore[misc]
    refused += _holders(session, reading.reports, verdict, _Takers(claims), jobs, held)
    for report, detail in refused:
        reading.refuse(report, reason_of(detail), detail)
    return {job_id: job.service_id for job_id, job in jobs.items()}


def reason_of(detail: str) -> Reason:
    """The dead-letter reason of a refusal's words (``FORGED`` for words no rule begins)."""
    return _REASONS.get(detail.split(":", 1)[0], Reason.FORGED)


def record(session: Session, job_id: uuid.UUID, attempt: int, credential: str) -> None:
    """``credential`` holds ``attempt`` of the job, unless a credential does already.

    For the HTTP gateway, which moves the jobs it claims itself: its WORKING
    entry reaches the mirror after the move, and must find it held.
    """
    _insert(session, [(job_id, attempt, credential)])


def _verified(claim: Signed | str, keys: dict[str, ReportKey | str]) -> Signed | str:
    if isinstance(claim, str):
        return claim
    key = keys.get(claim.name)
    if key is None:
        return f"unknown credential: {claim.name!r} is not enrolled"
    if isinstance(key, str):
        return key
    if not claim.verifies(key):
        return f"forged: the MAC is not {claim.name!r}'s over this report"
    return claim


def _keys(session: Session, names: Iterable[str]) -> dict[str, ReportKey | str]:
    """Each enrolled name's key, or why it signs nothing (revoked, or a key unreadable)."""
    found: dict[str, ReportKey | str] = {}
    wanted = sorted(names)
    for start in range(0, len(wanted), _CHUNK):
        rows = session.execute(
            sa.select(
                WorkerCredentialRow.name,
                WorkerCredentialRow.report_key,
                WorkerCredentialRow.revoked_at,
            ).where(WorkerCredentialRow.name.in_(wanted[start : start + _CHUNK]))
        )
        for name, secret, revoked_at in rows:
            if revoked_at is not None:
                found[name] = f"revoked: {name!r} was revoked at {revoked_at.isoformat()}"
                continue
            key = _KEYS.get(secret)
            if key is None:
                key = _KEYS[secret] = ReportKey(secret)
            found[name] = key
    return found


class _Takers:
    """Who took each claim, read from Redis once per reading for the holds it may start."""

    def __init__(self, claims: Claims) -> None:
        self._claims = claims

    def of(self, reports: Sequence[Report]) -> dict[int, str | None]:
        """The credential that took the claim of each report's take, by ``id(report)``."""
        asked = [r for r in reports if r.take is not None]
        takes = [(r.message.job_id, r.take) for r in asked]
        return {
            id(report): taker
            for report, taker in zip(asked, self._claims.takers(takes), strict=True)  # type: ignore[arg-type]
        }


def _holders(
    session: Session,
    reports: Sequence[Report],
    check: Callable[[Report], str | Signed],
    takers: _Takers,
    jobs: dict[uuid.UUID, _Job],
    held: dict[Attempt, str],
) -> list[tuple[Report, str]]:
    """Check each job report against its attempt's holder, in stream order; record new holds."""
    before = dict(held)
    # The WORKINGs that may start a hold: of an attempt nobody holds, or one given back here.
    released = {
        (r.message.job_id, r.message.attempt)
        for r in reports
        if r.message.kind == "release" and _counted(r.message.attempt)
    }
    starts = [
        report
        for report in reports
        if report.message.kind == "status"
        and report.message.status == Status.WORKING.value
        and _counted(report.message.attempt)
        and (
            (key := (report.message.job_id, report.message.attempt)) not in held or key in released
        )
    ]
    took = takers.of(starts)
    refused: list[tuple[Report, str]] = []
    for report in reports:
        message = report.message
        job_id: uuid.UUID = message.job_id  # type: ignore[assignment]
        job = jobs.get(job_id)
        if job is None or job.service_id != message.service_id:
            continue  # the mirror refuses it: no such job, or not of that service
        claim = check(report)
        if isinstance(claim, str):
            refused.append((report, claim))
            continue
        if not _counted(message.attempt):
            refused.append((report, f"forged: attempt {message.attempt!r} is not a number"))
            continue
        attempt = (job_id, message.attempt)
        holder = held.get(attempt)
        if message.kind == "status" and message.status == Status.WORKING.value:
            startable = job.status in _STARTABLE and message.attempt >= job.attempts
            if holder is None and startable and took.get(id(report)) == claim.name:
                held[attempt] = claim.name
                continue
            if holder is None and startable:
                reason = (
                    f"{claim.name!r} did not take the claim of job {job_id} (take {report.take})"
                )
                refused.append((report, f"not the holder: {reason}"))
                continue
            if holder is None:
                reason = f"job {job_id} is {job.status}: its attempt {message.attempt} cannot start"
                refused.append((report, f"not the holder: {reason}"))
                continue
        if holder != claim.name:
            whose = "nobody" if holder is None else repr(holder)
            reason = f"attempt {message.attempt} of job {job_id} is held by {whose}"
            refused.append((report, f"not the holder: {reason}, not {claim.name!r}"))
        elif message.kind == "release":
            del held[attempt]
    _write(session, before, held)
    return refused


def _counted(attempt: object) -> bool:
    """Whether a report's attempt is a number (the stream may hold anything there)."""
    return isinstance(attempt, int) and not isinstance(attempt, bool)


def _jobs(
    session: Session, job_ids: set[uuid.UUID]
) -> tuple[dict[uuid.UUID, _Job], dict[Attempt, str]]:
    """The reported jobs as SQL has them, and the holders of their attempts."""
    jobs: dict[uuid.UUID, _Job] = {}
    held: dict[Attempt, str] = {}
    query: sa.Select[*tuple[Any, ...]] = sa.select(
        JobRow.id,
        JobRow.service_id,
        JobRow.status,
        JobRow.attempts,
        JobHolderRow.attempt,
        JobHolderRow.credential,
    ).outerjoin(JobHolderRow, JobHolderRow.job_id == JobRow.id)
    dialect = session.get_bind().dialect.name
    for among in ids_among(dialect, JobRow.id, sorted(job_ids)):
        rows = session.execute(query.where(among))
        for job_id, service_id, status, attempts, attempt, credential in rows:
            jobs[job_id] = _Job(service_id, status, attempts or 0)
            if credential is not None:
                held[(job_id, attempt)] = credential
    return jobs, held


def _write(session: Session, before: dict[Attempt, str], after: dict[Attempt, str]) -> None:
    """Make SQL's holders ``after``'s, from ``before``'s: holds given back, holds taken."""
    gone = [attempt for attempt, name in before.items() if after.get(attempt) != name]
    if gone:
        session.execute(
            sa.delete(JobHolderRow).where(
                sa.tuple_(JobHolderRow.job_id, JobHolderRow.attempt).in_(gone)
            )
        )
    new = [(job, n, name) for (job, n), name in after.items() if before.get((job, n)) != name]
    _insert(session, new)


def _insert(session: Session, holds: list[tuple[uuid.UUID, int, str]]) -> None:
    if not holds:
        return
    if session.get_bind().dialect.name == "postgresql":
        # One statement over three arrays: an INSERT per row cost the mirror
        # more than the rest of a job's holder check.
        session.connection().execute(
            _UNNESTED_INSERT,
            {
                "h_jobs": [job for job, _, _ in holds],
                "h_attempts": [n for _, n, _ in holds],
                "h_names": [name for _, _, name in holds],
            },
        )
        return
    # On the connection: the ORM's bulk path (the session's) costs more than the INSERT.
    session.connection().execute(
        sqlite.insert(JobHolderRow).on_conflict_do_nothing(),
        [{"job_id": job, "attempt": n, "credential": name} for job, n, name in holds],
    )


_UNNESTED_INSERT = (
    postgresql.insert(JobHolderRow)
    .from_select(
        ["job_id", "attempt", "credential"],
        sa.select(
            sa.func.unnest(sa.bindparam("h_jobs", type_=ARRAY(sa.Uuid()))),
            sa.func.unnest(sa.bindparam("h_attempts", type_=ARRAY(sa.Integer()))),
            sa.func.unnest(sa.bindparam("h_names", type_=ARRAY(sa.String()))),
        ),
    )
    .on_conflict_do_nothing()
)
