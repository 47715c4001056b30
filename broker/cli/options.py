"""What every ``topchef`` command shares.

One-line errors instead of tracebacks, the settings a command requires (so none
falls back on a server nobody chose), durations and JSON arguments.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import stat
from collections.abc import Callable
from typing import Any, TypeVar

import click
import redis
import sqlalchemy.exc as sa_exc

from broker.errors import ConfigurationError, DeserializationError, SQLAlchemyError, TopChefError
from broker.ops.restarts import REFUSED
from broker.settings import Settings

F = TypeVar("F", bound=Callable[..., Any])


def user_errors(command: F) -> F:
    """Report a user's mistake, or a server out of reach, in one line: never a traceback."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except ConfigurationError as error:
            raise _refusal(sentence(error)) from None
        except TopChefError as error:
            raise click.ClickException(sentence(error)) from None
        except sa_exc.SQLAlchemyError as error:
            raise click.ClickException(sentence(SQLAlchemyError(error))) from None
        except (redis.ConnectionError, redis.TimeoutError) as error:
            raise click.ClickException(f"cannot reach the message broker: {error}") from None
        except redis.RedisError as error:
            raise click.ClickException(f"message broker error: {error}") from None

    return wrapper  # type: ignore[return-value]


class _StackRefusal(click.ClickException):
    """A configuration a part of a stack refuses: started again, it would refuse again."""

    exit_code = REFUSED


def _refusal(message: str) -> click.ClickException:
    """A configuration refused; as a part of a stack, with the status that stops the stack.

    A part that refuses is not started again (``broker.ops.restarts``).
    """
    from broker.ops.supervisor import supervised

    return _StackRefusal(message) if supervised() else click.ClickException(message)


def sentence(error: TopChefError) -> str:
    """The error as a lab user reads it: no serializer's jargon, one line for a server's."""
    if isinstance(error, ConfigurationError):
        return error.detail  # says what to set; "Configuration error:" adds nothing
    if type(error) is DeserializationError:
        return f"invalid {error.detail}"  # "invalid parameters.x: 'a' is not of type ..."
    if isinstance(error, SQLAlchemyError):
        underlying = error.underlying_exception
        reason = str(getattr(underlying, "orig", None) or underlying).strip().splitlines()
        first = reason[0] if reason else type(underlying).__name__
        if isinstance(underlying, sa_exc.OperationalError | sa_exc.InterfaceError):
            return f"cannot reach the database: {first}"
        return f"database error: {first}"
    return str(error)


def required_settings(*, broker: bool = False, database: bool = False) -> Settings:
    """The settings, required to name the broker and/or database this command uses."""
    return Settings.from_env().require(broker=broker, database=database)


def database_settings(*, broker: bool = False) -> Settings:
    """Settings for a command that uses the database, which must exist with its schema.

    Checked first, so that no command but those that migrate (``db upgrade``,
    ``mirror``, ``beat``, ``api``, ``up``) creates a SQLite file, and a database
    with no schema is reported as such rather than as a failed query.
    """
    from broker.storage.migrate import check_schema

    settings = required_settings(broker=broker, database=True)
    check_schema(settings.database_url)
    return settings


class Seconds(click.ParamType[float]):
    """A duration: a finite number of seconds, not negative."""

    name = "seconds"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> float:
        if isinstance(value, float):
            return value
        try:
            seconds = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a number of seconds", param, ctx)
        if not math.isfinite(seconds) or seconds < 0:
            self.fail(f"{value!r} is not a number of seconds >= 0", param, ctx)
        return seconds


SECONDS = Seconds()


#: The largest file an ``@path`` argument may name: far past any payload the
#: bounds accept (``broker.contract.MAX_BYTES`` of compact JSON), pretty-printed.
MAX_FILE_BYTES = 16 * 1024 * 1024


def json_argument(text: str, what: str) -> Any:
    """The JSON value ``text`` holds, or that the file ``@path`` holds; else a one-line
    ``DeserializationError`` saying what is wrong (never an ``OSError`` or a
    ``RecursionError`` from deep inside).
    """
    source = _read_file(text[1:], what) if text.startswith("@") else text
    try:
        return json.loads(source)
    except RecursionError:
        raise DeserializationError(what, "not valid JSON: nested too deeply") from None
    except ValueError as error:  # JSONDecodeError, or an integer too long to read
        raise DeserializationError(what, f"not valid JSON: {_one_line(str(error))}") from None


def _read_file(name: str, what: str) -> str:
    shown = _shown(name)
    try:
        with open(name, "rb") as file:
            if not stat.S_ISREG(os.fstat(file.fileno()).st_mode):
                raise DeserializationError(what, f"{shown} is not a regular file")
            data = file.read(MAX_FILE_BYTES + 1)
    except IsADirectoryError:
        raise DeserializationError(what, f"{shown} is a directory, not a file") from None
    except FileNotFoundError:
        raise DeserializationError(what, f"no such file: {shown}") from None
    except (OSError, ValueError) as error:  # too long a name, no permission, a NUL in it
        reason = error.strerror if isinstance(error, OSError) and error.strerror else error
        raise DeserializationError(what, f"cannot read {shown}: {_one_line(str(reason))}") from None
    if len(data) > MAX_FILE_BYTES:
        raise DeserializationError(what, f"{shown} is larger than {MAX_FILE_BYTES} bytes")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise DeserializationError(
            what, f"{shown} is not UTF-8 text (byte {error.start} cannot be read)"
        ) from None


def _shown(name: str, limit: int = 80) -> str:
    """A file name as one line, clipped: it may be long or hold a newline."""
    text = repr(name)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(name)} characters)"


def _one_line(text: str) -> str:
    return " ".join(text.split())[:300]


def configure_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
