"""The deliveries workers refused, read by beat so that no refusal strands a job.

A worker refuses a delivery it cannot verify (``forged``, ``altered``…) and
logs it in ``keys.REFUSED_LOG``. When the refused message was the job's only
one — a parked message rewritten in Redis, a queued one replaced — the job
would wait REGISTERED with nothing left to deliver it. Beat reads the log and
sends each such job again from SQL, signed (``recovery.republish_refused``).

The log is writable by anyone with the Redis password, so an entry only names
a job to look at: SQL decides whether it still waits, and the job's claim runs
it once however many times it is sent.
"""

from __future__ import annotations

import uuid

import redis

from broker.messaging import keys
from broker.messaging.connections import text

#: How far back a starting beat reads the log: refusals older than this were
#: seen by the beat before it (or their jobs by the overtaken search since).
LOOK_BACK_MS = 10 * 60 * 1000
#: The most entries one tick reads: a flood of forged entries costs a tick no more.
READ_AT_MOST = 500


class Refusals:
    """This beat's place in the refused-deliveries log."""

    def __init__(self, client: redis.Redis) -> None:
        self._client = client
        self._last: str | None = None

    def new_jobs(self) -> list[uuid.UUID]:
        """The ids of jobs refused since the last call (each once), oldest first."""
        if self._last is None:
            seconds, micros = self._client.time()
            self._last = f"{max(0, seconds * 1000 + micros // 1000 - LOOK_BACK_MS)}-0"
        entries = self._client.xrange(keys.REFUSED_LOG, min=f"({self._last}", count=READ_AT_MOST)
        found: dict[uuid.UUID, None] = {}
        for entry_id, fields in entries or []:
            self._last = text(entry_id)
            job = _job_id(fields.get(b"job_id") if isinstance(fields, dict) else None)
            if job is not None:
                found[job] = None
        return list(found)


def _job_id(raw: object) -> uuid.UUID | None:
    if not isinstance(raw, bytes) or len(raw) > 64:
        return None
    try:
        return uuid.UUID(raw.decode("ascii"))
    except (ValueError, UnicodeDecodeError):
        return None
