"""What a state entry must be for the mirror to apply it, and the reason it is refused if not.

Every lab PC holds the Redis password, so anything at all may be on the state
stream: any field names, any bytes, any id. The mirror reads an entry here,
strictly, before anything else looks at it: a field of the wrong type, a value
out of the range its SQL column holds, nesting deeper or text longer than the
contract's bounds (``broker.contract.bounds``), an unknown kind or status, is
a ``RefusedEntry`` with its ``Reason``, which the mirror dead-letters and
counts (``broker.mirror.dead_letters``) and never raises out of its loop.

Some things are read leniently by rule, because a genuine worker can send
them and refusing would drop what it measured:

- free text (a run's ``detail``, a progress ``message``) keeps what SQL can
  store: NUL and lone surrogates become U+FFFD, and text past
  ``MAX_TEXT_CHARS`` is cut, saying so;
- entry fields other than ``m``, ``late``, ``since`` and ``take`` are ignored
  (so a field another version adds is harmless), and a ``take`` that is not a
  positive 31-bit number is no take (``entries._take``);
- on a check-in or a provenance entry, the fields about a job are read by
  the same rules, and not used.
"""

from __future__ import annotations

import enum
import json
import re
import uuid
from collections.abc import Callable, Mapping
from typing import Any

from broker.contract.bounds import MAX_BYTES, check_payload, surely_within_bounds
from broker.errors import DeserializationError, TopChefError
from broker.messaging.messages import StateMessage
from broker.models import lifecycle

Status = lifecycle.Status

#: The largest entry read at all (all its fields, in bytes): results are at most
#: ``MAX_BYTES`` of JSON, and as much again is room for everything beside them.
MAX_ENTRY_BYTES = 2 * MAX_BYTES
#: Free text longer than this is cut (a traceback's last line is what matters).
MAX_TEXT_CHARS = 64 * 1024
#: The largest value of an SQL ``INTEGER`` column (attempts, takes).
MAX_SQL_INT = 2**31 - 1
#: The longest worker name a row holds (``String(255)``).
MAX_NAME_CHARS = 255

#: The kinds of entry the mirror applies (``StateMessage``).
KINDS = frozenset({"status", "progress", "release", "retry", "checkin", "provenance"})
#: The kinds that report on one job, and so must name it.
JOB_REPORTS = frozenset({"status", "progress", "release", "retry"})
#: What a worker may report a job moved to (REGISTERED is the producer's).
REPORTED = frozenset({Status.WORKING, *lifecycle.TERMINAL})
#: ``Claims.finish``'s lateness values (finish.lua).
LATENESS = frozenset({"lost", "requeued", "unknown", "superseded"})
#: A run provenance's digest (``RunProvenance.digest``: 16 bytes, in hex).
_DIGEST = re.compile(r"[0-9a-f]{1,32}")
#: Free text's characters that SQL cannot store: NUL (PostgreSQL) and lone surrogates.
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


class Reason(enum.StrEnum):
    """Why an entry was dead-lettered: the ``reason`` label of its metric, a short fixed set."""

    #: Not an entry at all: no ``m`` field, not UTF-8, not a JSON object.
    UNREADABLE = "unreadable"
    #: Larger than ``MAX_ENTRY_BYTES``, or results or extra larger than the contract allows.
    TOO_LARGE = "too_large"
    #: JSON nested deeper than the contract allows (``MAX_DEPTH``).
    TOO_DEEP = "too_deep"
    UNKNOWN_KIND = "unknown_kind"
    UNKNOWN_STATUS = "unknown_status"
    #: A field of the wrong type, out of its column's range, or that makes no sense.
    INVALID = "invalid"
    #: Its id was ahead of Redis's clock (``dead_letters.FUTURE_BOUND_MS``).
    FUTURE = "future"
    #: A report of a job SQL does not know.
    UNKNOWN_JOB = "unknown_job"
    #: A report naming another service than its job's own.
    MISATTRIBUTED = "misattributed"
    INVALID_PROVENANCE = "invalid_provenance"
    #: The database refused it, applied alone (a value no rule above foresaw).
    UNAPPLIABLE = "unappliable"
    #: No credential's name or MAC (``broker.trust.reports``).
    UNSIGNED = "unsigned"
    #: Its MAC is not its credential's over this report (or its attempt is no number).
    FORGED = "forged"
    #: Authenticated by a credential no operator enrolled.
    UNKNOWN_CREDENTIAL = "unknown_credential"
    #: Authenticated by a credential an operator revoked.
    REVOKED = "revoked"
    #: A report on a job's attempt from another credential than the one holding it.
    NOT_HOLDER = "not_holder"


class RefusedEntry(TopChefError):
    """A state entry the mirror will not apply, and why."""

    title = "State entry refused"

    def __init__(self, reason: Reason, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


def read_message(fields: Mapping[Any, Any]) -> StateMessage:
    """The entry's message, read by the rules above; ``RefusedEntry`` if it breaks one."""
    size = _size(fields)
    if size > MAX_ENTRY_BYTES:
        raise RefusedEntry(Reason.TOO_LARGE, f"{size} bytes; at most {MAX_ENTRY_BYTES} are read")
    raw = field_text(fields, "m")
    if raw is None:
        raise RefusedEntry(Reason.UNREADABLE, "a state entry carries its message in field 'm'")
    try:
        data = _DECODER.decode(raw)
    except RecursionError:
        raise RefusedEntry(Reason.TOO_DEEP, "JSON nested too deep to read") from None
    except ValueError as error:  # JSONDecodeError, NaN, an integer of too many digits
        raise RefusedEntry(Reason.UNREADABLE, f"'m' is not JSON: {error}") from None
    if not isinstance(data, dict):
        raise RefusedEntry(Reason.UNREADABLE, f"'m' is JSON {type(data).__name__}, not an object")
    unknown = sorted(set(data) - _RULES.keys())
    if unknown:
        raise RefusedEntry(Reason.INVALID, f"unknown field(s) in 'm': {', '.join(unknown)[:200]}")
    kind = data.get("kind")
    if not isinstance(kind, str) or kind not in KINDS:
        raise RefusedEntry(Reason.UNKNOWN_KIND, f"unknown kind {_shown(kind)}")
    # Walking each report's results cost the mirror more than verifying its MAC.
    rules = _BOUNDED_RULES if surely_within_bounds(raw) else _RULES
    # A field absent or null takes the message's default, as each rule gives for None.
    values = {name: rules[name](value, name) for name, value in data.items() if value is not None}
    if "service_id" not in values:
        _uuid(None, "service_id")  # refused: every entry names its service
    message = StateMessage(**values)
    if kind in JOB_REPORTS and message.job_id is None:
        raise RefusedEntry(Reason.INVALID, f"a {kind} report must name its job_id")
    if kind == "status" and message.status is None:
        raise RefusedEntry(Reason.INVALID, "a status report must name its status")
    if message.status is not None and Status(message.status) not in REPORTED:
        raise RefusedEntry(Reason.INVALID, f"a worker does not report {message.status}")
    return message


def read_lateness(fields: Mapping[Any, Any], at_ms: int) -> tuple[str | None, int | None]:
    """``Claims.finish``'s lateness and when beat presumed the worker lost, if any.

    ``since`` is Redis's clock at the presumption, so never after the report itself.
    """
    late = field_text(fields, "late")
    if not late:
        return None, None
    if late not in LATENESS:
        raise RefusedEntry(Reason.INVALID, f"unknown lateness {_shown(late)}")
    since = field_text(fields, "since")
    if not since:
        return late, None
    if not (since.isascii() and since.isdigit() and len(since) <= 20 and int(since) <= at_ms):
        raise RefusedEntry(Reason.INVALID, f"'since' is not a time before the report: {since!r}")
    return late, int(since)


def field_text(fields: Mapping[Any, Any], name: str) -> str | None:
    """A field's value as text, whether the client gave bytes or str; None if absent."""
    value = fields.get(name.encode(), fields.get(name))
    if value is None:
        return None
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            raise RefusedEntry(Reason.UNREADABLE, f"field {name!r} is not UTF-8") from None
    if isinstance(value, str):
        return value
    raise RefusedEntry(Reason.UNREADABLE, f"field {name!r} is not text")


# -- one rule per StateMessage field ---------------------------------------------


def _uuid(value: object, name: str) -> uuid.UUID | None:
    if value is None and name == "job_id":
        return None
    if not isinstance(value, str) or len(value) > 64:
        raise RefusedEntry(Reason.INVALID, f"{name} must be a UUID, got {_shown(value)}")
    try:
        return uuid.UUID(value)
    except ValueError:
        raise RefusedEntry(Reason.INVALID, f"{name} is not a UUID: {_shown(value)}") from None


def _kind(value: object, _name: str) -> str:
    return str(value)  # checked against KINDS before the rules run


def _status(value: object, _name: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or value not in _STATUSES:
        raise RefusedEntry(Reason.UNKNOWN_STATUS, f"unknown status {_shown(value)}")
    return value


def _payload(value: object, name: str) -> dict[str, Any] | None:
    if value is None and name == "results":
        return None
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise RefusedEntry(Reason.INVALID, f"{name} must be an object, got {_shown(value)}")
    try:
        checked: dict[str, Any] = check_payload(value, name).value
    except DeserializationError as error:
        reason = Reason.TOO_DEEP if "nested deeper" in error.detail else Reason.INVALID
        if "bytes of JSON" in error.detail:
            reason = Reason.TOO_LARGE
        raise RefusedEntry(reason, error.detail) from None
    return checked


def _object(value: object, name: str) -> dict[str, Any] | None:
    """``_payload`` for an entry ``surely_within_bounds``: JSON read, only its type is checked."""
    if not isinstance(value, dict):
        raise RefusedEntry(Reason.INVALID, f"{name} must be an object, got {_shown(value)}")
    return value


def _text(value: object, name: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise RefusedEntry(Reason.INVALID, f"{name} must be text, got {_shown(value)}")
    return storable_text(value)


def _fraction(value: object, name: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise RefusedEntry(Reason.INVALID, f"{name} must be a number, got {_shown(value)}")
    if not 0 <= value <= 1:  # compared as it is: a float of a 400-digit int would overflow
        raise RefusedEntry(Reason.INVALID, f"{name} must be between 0 and 1, got {_shown(value)}")
    return float(value)


def _attempt(value: object, name: str) -> int:
    if value is None:
        return 1
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_SQL_INT:
        raise RefusedEntry(
            Reason.INVALID, f"{name} must be a whole number from 1, got {_shown(value)}"
        )
    return value


def _name(value: object, name: str) -> str | None:
    if value is None:
        return None
    if (
        not isinstance(value, str)
        or not 0 < len(value) <= MAX_NAME_CHARS
        or _UNSTORABLE.search(value)
    ):
        raise RefusedEntry(Reason.INVALID, f"{name} must be a short name, got {_shown(value)}")
    return value


def _flag(value: object, name: str) -> bool | None:
    if value is not None and not isinstance(value, bool):
        raise RefusedEntry(Reason.INVALID, f"{name} must be true or false, got {_shown(value)}")
    return value


def _digest(value: object, name: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not _DIGEST.fullmatch(value):
        raise RefusedEntry(Reason.INVALID, f"{name} must be a digest, got {_shown(value)}")
    return value


_STATUSES = frozenset(status.value for status in Status)

#: Each field of ``StateMessage`` and the rule that reads it. A field added to
#: the message needs a rule here, or every entry carrying it is refused.
_RULES: dict[str, Callable[[object, str], Any]] = {
    "kind": _kind,
    "service_id": _uuid,
    "job_id": _uuid,
    "status": _status,
    "results": _payload,
    "detail": _text,
    "progress": _fraction,
    "message": _text,
    "attempt": _attempt,
    "worker": _name,
    "available": _flag,
    "extra": _payload,
    "provenance": _digest,
}


#: The rules for an entry ``surely_within_bounds``: its payloads need no walk.
_BOUNDED_RULES = {**_RULES, "results": _object, "extra": _object}


def storable_text(text: str) -> str:
    """``text`` as SQL can store it: without NUL or lone surrogates, at most ``MAX_TEXT_CHARS``."""
    if len(text) > MAX_TEXT_CHARS:
        text = f"{text[:MAX_TEXT_CHARS]}… (cut: {len(text)} characters in all)"
    return _UNSTORABLE.sub("\ufffd", text)


def _no_constant(name: str) -> object:
    raise ValueError(f"{name} is not a JSON number")


#: One decoder for every entry (``json.loads`` with an option builds one a call).
_DECODER = json.JSONDecoder(parse_constant=_no_constant)


def _size(fields: Mapping[Any, Any]) -> int:
    """The bytes of an entry's names and values that are text (redis-py gives bytes only)."""
    try:
        return sum(map(len, fields)) + sum(map(len, fields.values()))
    except TypeError:  # a value that is not text, from some other client
        return sum(len(name) + len(value) for name, value in fields.items() if _sized(name, value))


def _sized(name: object, value: object) -> bool:
    return isinstance(name, bytes | str) and isinstance(value, bytes | str)


def _shown(value: object) -> str:
    """A value as a refusal quotes it: short, whatever it is (nesting is not walked)."""
    if isinstance(value, dict | list):
        return f"a JSON {'object' if isinstance(value, dict) else 'array'}"
    text = repr(value)
    return text if len(text) <= 80 else f"{text[:77]}..."
