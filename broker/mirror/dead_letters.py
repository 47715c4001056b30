"""The entries the mirror will not apply, kept for an operator, and the stream's clock kept true.

A refused entry goes to the dead-letter stream (``keys.DEAD_STATE_STREAM``)
with its ``reason`` (``admission.Reason``) and an ``error`` that says what is
wrong with it, and is counted by reason (``keys.DEAD_STATE_REASONS``, which
``broker.ops.metrics`` exports); the stream keeps the latest
``DEAD_LETTERS_KEPT`` entries, the counts keep everything.

How no single write a lab PC's credentials allow stops the other workers from
reporting, on the state stream. Workers append (XADD) to one stream, and an
entry is whatever its writer chose: its fields, its size, its id.

- Its content cannot stop the mirror: ``admission`` reads every entry
  strictly and bounded, the mirror applies a reading one entry at a time if
  the database refuses it as a whole, and what cannot be applied is
  dead-lettered and acknowledged, so it is never read again.
- Its id cannot stop or skew the stream. Redis gives each new entry an id
  after the stream's last one, so one entry written with an id ahead of
  Redis's clock would stamp every later report ahead (a year, say), and the
  largest id (18446744073709551615-18446744073709551615) makes every later
  XADD fail ("The stream has exhausted the last possible ID"). The mirror
  restamps (``restamp.lua``, one atomic script): it dead-letters every entry
  ahead of Redis's clock, deletes it and appends it again with a true id, so
  that a real report written behind a forged one is still applied; then sets
  the stream's last id back (XSETID, which Redis 6.2 and 7 allow down to the
  stream's last remaining entry) and, if the group had been given an entry
  ahead, the group's too (XGROUP SETID 0: entries still in the stream are
  delivered again, and applying one twice changes nothing). It does so as soon
  as it reads such an entry, and checks the stream's last id every
  ``CHECK_SECONDS`` besides, for a last id set ahead with no entry (XSETID).
- Its key cannot be taken: a value of another type written over the stream
  (a SET) is moved aside to ``keys.CLOBBERED_STATE`` at that check, and a
  consumer that reads entries into its own pending list and sits on them has
  them taken over by the mirror (``Mirror.abandoned_after_ms``).
- A report that failed meanwhile is not lost: every script that appends to
  the stream appends first, before it changes anything, so a failed append
  leaves the claim as it was, and ``Claims`` waits the repair out
  (``broker.messaging.claims``).

What this cannot undo is a write that destroys entries not yet applied. A
lab worker's Redis user is refused XTRIM, XDEL and FLUSHDB by its ACL, but it
needs DEL (its leases) and XADD, and Redis 6.2's ACLs cannot tie a command to
one key: a DEL of the stream, or an XADD with MAXLEN, loses the entries waiting
at that moment (about a reading's worth: the mirror reads continuously). It
stops nothing: the next report makes the stream again, and the mirror its
group. Only streams of their own per worker (or Redis 7's ACL selectors) would
take that away too.
"""

from __future__ import annotations

import importlib.resources
import logging
import time
from collections.abc import Iterable

import redis

from broker.messaging import keys
from broker.mirror.admission import MAX_ENTRY_BYTES, Reason
from broker.mirror.entries import FUTURE_BOUND_MS, DeadLetter

log = logging.getLogger(__name__)

#: Dead letters the stream keeps (approximately); older ones are trimmed, their counts kept.
DEAD_LETTERS_KEPT = 10_000
#: How often the mirror checks, reading nothing ahead, that the stream's last id is not ahead.
CHECK_SECONDS = 1.0
#: A field of a refused entry is copied into its dead letter up to this many bytes.
MAX_DEAD_FIELD_BYTES = 64 * 1024

_RESTAMP = (importlib.resources.files("broker.messaging") / "lua" / "restamp.lua").read_text(
    encoding="utf-8"
)


class DeadLetters:
    """The dead-letter stream, its counts, and the restamping of the state stream."""

    def __init__(self, client: redis.Redis) -> None:
        self._restamp = client.register_script(_RESTAMP)
        self._checked_at = 0.0

    def queue(self, pipeline: redis.client.Pipeline, letters: Iterable[DeadLetter]) -> None:
        """Dead-letter ``letters`` and count them, in ``pipeline`` (the reading's ack)."""
        for letter in letters:
            log.error(
                "state entry %r refused (%s): %s", letter.entry_id, letter.reason, letter.detail
            )
            fields = _kept(letter.fields, letter.reason)
            fields[b"reason"] = letter.reason.value.encode()
            fields[b"error"] = letter.detail[:2000].encode("utf-8", "replace")
            pipeline.xadd(
                keys.DEAD_STATE_STREAM,
                fields,  # type: ignore[arg-type]
                maxlen=DEAD_LETTERS_KEPT,
                approximate=True,
            )
            pipeline.hincrby(keys.DEAD_STATE_REASONS, letter.reason.value, 1)

    def restamp(self, client: redis.Redis, read_ahead: bool = False) -> set[bytes]:
        """Restamp the stream if it is ahead of Redis's clock; the ids of the entries moved.

        Runs when the mirror read an entry ahead (``read_ahead``), and at most
        every ``CHECK_SECONDS`` otherwise: the script costs one round trip.
        """
        now = time.monotonic()
        if not read_ahead and now - self._checked_at < CHECK_SECONDS:
            return set()
        self._checked_at = now
        try:
            rewound, *moved = self._restamp(
                keys=[
                    keys.STATE_STREAM,
                    keys.DEAD_STATE_STREAM,
                    keys.DEAD_STATE_REASONS,
                    keys.CLOBBERED_STATE,
                ],
                args=[keys.MIRROR_GROUP, FUTURE_BOUND_MS, DEAD_LETTERS_KEPT],
                client=client,
            )
        except redis.ResponseError as error:
            # A key of the wrong type (someone wrote there): Redis ACLs' to prevent.
            log.error("cannot restamp the state stream: %s", error)
            return set()
        if int(rewound) == 2:
            log.error(
                "something was written over the state stream; moved aside to %s",
                keys.CLOBBERED_STATE,
            )
        elif moved or int(rewound):
            log.error(
                "the state stream was ahead of Redis's clock: %d entries restamped and "
                "dead-lettered (reason 'future'), its ids set back",
                len(moved),
            )
        return {_bytes(entry_id) for entry_id in moved}


def _bytes(value: object) -> bytes:
    return value if isinstance(value, bytes) else str(value).encode()


def _kept(fields: dict[bytes, bytes], reason: Reason) -> dict[bytes, bytes]:
    """A refused entry's fields as its dead letter keeps them: whole, unless it was too large."""
    if reason is not Reason.TOO_LARGE:
        return dict(fields)
    kept: dict[bytes, bytes] = {}
    budget = MAX_ENTRY_BYTES
    for name, value in list(fields.items())[:32]:
        name_bytes = name if isinstance(name, bytes) else str(name).encode()
        value_bytes = value if isinstance(value, bytes) else str(value).encode()
        kept[name_bytes[:256]] = value_bytes[: min(MAX_DEAD_FIELD_BYTES, budget)]
        budget = max(0, budget - MAX_DEAD_FIELD_BYTES)
    return kept
