"""What every ``topchef`` command shares.

One-line errors instead of tracebacks, the settings a command requires (so none
falls back on a server nobody chose), durations and JSON arguments.
"""

from __future__ import annotations

import functools
import json
import logging
import math
from collections.abc import Callable
from pathlib import Path
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


def json_argument(text: str, what: str) -> Any:
    source = text
    if text.startswith("@"):
        path = Path(text[1:])
        if not path.is_file():
            raise DeserializationError(what, f"no such file: {path}")
        source = path.read_text()
    try:
        return json.loads(source)
    except json.JSONDecodeError as error:
        raise DeserializationError(what, f"not valid JSON: {error}") from None


def configure_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
