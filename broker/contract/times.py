"""The times a user gives: when a job may start (``not_before``).

A time must carry its zone. A lab's PCs, its database server and its users are
not always in one zone (a laptop on summer time, a server on UTC), so a time
without one would name a different moment depending on who read it; it is
refused rather than guessed. Within that rule, any ISO 8601 form a person
types is taken: seconds optional, any fraction of a second, ``Z`` or an
offset. From the command line a delay counted from now is taken too
(``+10m``); it stays a ``timedelta`` until the producer adds it to the
database's clock, the one clock beat judges a job's time by.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

from broker.errors import DeserializationError

#: A time as a user may give one.
EXAMPLE = "2026-12-24T08:00Z"
#: The longest delay taken, so that no delay carries a job past what a date can hold.
MAX_DELAY = timedelta(days=3653)
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_DELAY = re.compile(r"\+(?:\d+(?:\.\d+)?[smhd])+", re.ASCII)
_PART = re.compile(r"(\d+(?:\.\d+)?)([smhd])", re.ASCII)
_FORMS = f"ISO 8601 with its zone (e.g. {EXAMPLE}, seconds optional)"
_DELAYS = "a delay from now such as +30s, +10m, +2h, +1d or +1h30m"


def aware(value: object, name: str = "not_before") -> datetime:
    """``value`` if it is a time with its zone, in UTC; else ``DeserializationError``."""
    if not isinstance(value, datetime):
        raise DeserializationError(name, f"must be a time with its zone, got {value!r}")
    if value.utcoffset() is None:
        raise DeserializationError(name, _zoneless(value.isoformat()))
    try:
        return value.astimezone(UTC)
    except OverflowError:  # 9999-12-31T23:59-01:00 is past the last date Python holds
        raise DeserializationError(name, f"{value.isoformat()} is out of range") from None


def delay(value: object, name: str = "not_before") -> timedelta:
    """``value`` if it is a delay of at most ``MAX_DELAY``; else ``DeserializationError``."""
    if not isinstance(value, timedelta) or abs(value) > MAX_DELAY:
        raise DeserializationError(name, f"must be a delay of at most {MAX_DELAY.days} days")
    return value


def parse_time(text: str, name: str = "not_before") -> datetime:
    """An ISO 8601 time with its zone (``Z`` or an offset), in UTC."""
    return _iso(text.strip(), name, _FORMS)


def parse_when(text: str, name: str = "--not-before") -> datetime | timedelta:
    """A time (``parse_time``) or a delay from now (``+10m``, ``+1h30m``), as the CLI takes them."""
    shown = text.strip()
    if not shown.startswith("+"):
        return _iso(shown, name, f"{_FORMS}, or {_DELAYS}")
    if _DELAY.fullmatch(shown) is None:
        raise DeserializationError(name, f"{_clipped(shown)} is not a delay: give {_DELAYS}")
    seconds = sum(float(amount) * _UNITS[unit] for amount, unit in _PART.findall(shown))
    if seconds > MAX_DELAY.total_seconds():
        message = f"{_clipped(shown)} is more than {MAX_DELAY.days} days from now"
        raise DeserializationError(name, message)
    return timedelta(seconds=seconds)


def _iso(shown: str, name: str, forms: str) -> datetime:
    try:
        value = datetime.fromisoformat(shown.upper())  # 'z' and 't' as well as 'Z' and 'T'
    except ValueError:
        raise DeserializationError(name, f"{_clipped(shown)} is not a time: give {forms}") from None
    if value.utcoffset() is None:
        raise DeserializationError(name, _zoneless(shown))
    return aware(value, name)


def _zoneless(shown: str) -> str:
    return (
        f"{_clipped(shown)} has no zone: add Z for UTC or its offset (e.g. +01:00); "
        "without one it would name another moment on a PC in another zone"
    )


def _clipped(text: str, limit: int = 60) -> str:
    return repr(text) if len(text) <= limit else repr(text[: limit - 3] + "...")
