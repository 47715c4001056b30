"""One typed settings object, read from the environment once and passed in.

Nothing below ``broker`` reads ``os.environ`` itself: a process builds its
``Settings`` at start (``Settings.from_env()``) and hands it to what it runs, so
tests and embedded stacks can run several configurations side by side.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from importlib import metadata
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import redis

from broker.errors import ConfigurationError

PREFIX = "TOPCHEF_"

#: Where an embedded stack (``broker.ops.embedded``) keeps its Redis data and
#: announces its URL, for every command started in the same directory to find.
STATE_DIR = ".topchef"
URL_FILE = "broker.url"
#: The credential ``topchef up`` enrolls for its workers, in its state directory.
WORKER_KEY_FILE = "worker.key"
#: The SQLite file ``topchef up`` keeps its jobs in, in its working directory.
DATABASE_FILE = "topchef.sqlite3"
#: The registration key pair (``broker.trust.registrations``) a stack keeps in its
#: state directory, and ``topchef keys init`` writes: the private key signs the
#: jobs the core publishes, the public one lets a worker check them.
SIGNING_KEY_FILE = "registration.key"
PUBLIC_KEY_FILE = "registration.pub"
#: The artifact store ``topchef up`` keeps in its state directory (``broker.artifacts``).
ARTIFACTS_DIR = "artifacts"
#: How long a worker's running handlers have to stop after a second Ctrl-C,
#: unless ``topchef worker --abort-grace`` says otherwise (``broker.worker.shutdown``).
ABORT_GRACE_SECONDS = 10.0


def announced_url(directory: Path | None = None) -> str | None:
    """The URL of an embedded Redis running for ``directory``, if one answers."""
    path = (directory or Path.cwd()) / STATE_DIR / URL_FILE
    try:
        url = path.read_text().strip()
    except OSError:
        return None
    try:
        redis.Redis.from_url(url.replace("redis+socket://", "unix://"), socket_timeout=1).ping()
    except (redis.RedisError, OSError, ValueError):
        return None  # a stale file from a stack that has stopped
    return url


def _package_version() -> str:
    try:
        return metadata.version("topchef-broker")
    except metadata.PackageNotFoundError:  # running from a bare checkout
        return "0.0.0+unknown"


def stack_database_url(directory: Path) -> str:
    """The SQLite file of a ``topchef up`` run in ``directory``."""
    return f"sqlite:///{directory / DATABASE_FILE}"


def masked(url: str) -> str:
    """``url`` with its password hidden, fit to print or log."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    userinfo, _, host = parts.netloc.rpartition("@")
    user = userinfo.partition(":")[0]
    return urlunsplit((parts.scheme, f"{user}:***@{host}", parts.path, parts.query, parts.fragment))


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything a TopChef process may be configured with.

    ``database_url`` is only read by producers, the state mirror and beat;
    lab workers need ``broker_url`` alone. Neither has a default: an empty one
    is not configured, and ``require`` says so rather than guessing a server
    that may be someone else's (a Redis on localhost is not necessarily ours).
    """

    database_url: str = ""
    broker_url: str = ""
    maintainer_name: str = "TopChef maintainers"
    maintainer_email: str = "topchef@example.org"
    documentation_url: str = "https://github.com/TopChef/TopChef#readme"
    source_code_repository_url: str = "https://github.com/TopChef/TopChef"
    version: str = field(default_factory=_package_version)
    #: How long a worker's lease on a running job lives without renewal. A job
    #: whose lease lapsed lost its worker; beat then applies the service's policy.
    lease_seconds: float = 30.0
    #: How often beat runs its periodic tasks.
    beat_interval: float = 5.0
    #: How long after commit an unpublished job is left to its producer before
    #: beat publishes it (the outbox grace period).
    outbox_grace_seconds: float = 10.0
    #: Redis visibility timeout for unacknowledged job messages. Short, because a
    #: duplicate delivery is harmless (the claim refuses it) while a long one
    #: strands jobs prefetched by a dead worker.
    visibility_timeout: float = 60.0
    #: Port of the Prometheus endpoint served by ``topchef mirror``; 0 serves none.
    metrics_port: int = 0
    #: Where the metrics endpoint listens: loopback unless an operator opens it.
    metrics_host: str = "127.0.0.1"
    #: Bearer token the HTTP gateway requires on every route but ``GET /``;
    #: empty requires none (fine on loopback, not on a shared network). Kept out
    #: of ``repr`` so that logging the settings never leaks it.
    api_token: str = field(default="", repr=False)
    #: Request bodies larger than this are refused by the gateway with 413.
    api_max_body_bytes: int = 1024 * 1024
    #: The file of the credential a worker signs its reports with
    #: (``topchef workers enroll`` writes it); a worker does not start without one.
    worker_key: str = ""
    #: The URL clients reach the gateway's ``/`` at (``https://lab.example/topchef``),
    #: which every link and ``Location`` it writes starts with; empty: links are
    #: absolute paths (``/jobs/<id>``). Never taken from a request's ``Host``,
    #: which whoever sends the request chooses.
    api_base_url: str = ""
    #: The file of the private key that signs every job message the core
    #: publishes (producers, the gateway, beat). Never on a lab PC.
    registration_signing_key: str = ""
    #: The public half, as its text or the path of its file: a worker runs only
    #: what it verifies.
    registration_public_key: str = ""
    #: Where results too large for SQL are kept (``broker.artifacts``): a
    #: directory, shared by the workers and the readers of their results.
    #: ``topchef up`` keeps one in its stack directory.
    artifacts_url: str = ""

    @property
    def due_interval(self) -> float:
        """How often beat publishes jobs whose ``not_before`` came: a second, or a tick if sooner.

        A job held until a time starts within about this long after it.
        """
        return min(1.0, self.beat_interval)

    @property
    def unacked_restore_interval(self) -> float:
        """How often Redis hands dead consumers' unacknowledged messages back (kombu)."""
        return max(1.0, self.visibility_timeout / 10)

    @property
    def redelivery_window(self) -> float:
        """How long a message a dead worker had taken needs to be back in its queue."""
        return self.visibility_timeout + self.unacked_restore_interval

    @property
    def duplicate_window(self) -> float:
        """How long after a job ended in SQL a duplicate of its message can still arrive.

        The longest of the design's windows, plus a beat tick to act on it:
        a redelivery after the visibility timeout (and kombu's restore
        interval); beat's outbox re-publish after its grace period; beat's
        re-queue of a dead worker's batch after the batch's lease. Claims of
        ended jobs are kept this long (``Claims.settle``), then cost Redis nothing.
        """
        longest = max(self.redelivery_window, self.outbox_grace_seconds, self.lease_seconds)
        return longest + self.beat_interval

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Read ``TOPCHEF_*`` variables; unset or empty ones keep their default.

        Reading the process's own environment (no ``environ``), a broker or
        database left unset is taken from a ``topchef up`` in the working
        directory (``with_stack_in``), as a user at that prompt expects.
        """
        env = os.environ if environ is None else environ
        values: dict[str, object] = {}
        for name, kind in _FIELDS.items():
            given = env.get(PREFIX + name.upper(), "")
            raw = given.strip()
            if raw:
                values[name] = _parse(name, raw, kind)
            elif given and name in _SECRETS:
                raise ConfigurationError(
                    f"{PREFIX}{name.upper()} is set but blank: give it a value, or unset it"
                )
        settings = cls(**values)  # type: ignore[arg-type]
        return settings.with_stack_in(Path.cwd()) if environ is None else settings

    def with_stack_in(self, directory: Path) -> Settings:
        """Fill an unset broker, database and keys from the ``topchef up`` stack in ``directory``.

        Its broker only while it runs (the URL it announces answers); its
        SQLite file whenever it exists, so that jobs stay readable after a stop;
        its registration keys whenever it has made them, and its workers'
        credential, for a worker started there by hand.
        """
        broker_url, database_url, worker_key = self.broker_url, self.database_url, self.worker_key
        if not broker_url:
            broker_url = announced_url(directory) or ""
        if not database_url and (directory / DATABASE_FILE).is_file():
            database_url = stack_database_url(directory)
        signing, public = self.registration_signing_key, self.registration_public_key
        if not signing and (directory / STATE_DIR / SIGNING_KEY_FILE).is_file():
            signing = str(directory / STATE_DIR / SIGNING_KEY_FILE)
        if not public and (directory / STATE_DIR / PUBLIC_KEY_FILE).is_file():
            public = str(directory / STATE_DIR / PUBLIC_KEY_FILE)
        if not worker_key and (directory / STATE_DIR / WORKER_KEY_FILE).is_file():
            worker_key = str(directory / STATE_DIR / WORKER_KEY_FILE)
        artifacts = self.artifacts_url
        if not artifacts and (directory / STATE_DIR).is_dir():
            artifacts = str(directory / STATE_DIR / ARTIFACTS_DIR)
        return replace(
            self,
            artifacts_url=artifacts,
            broker_url=broker_url,
            database_url=database_url,
            worker_key=worker_key,
            registration_signing_key=signing,
            registration_public_key=public,
        )

    def require(self, *, broker: bool = False, database: bool = False) -> Settings:
        """These settings, if they name what a command needs; else say how to name it.

        Raises one ``ConfigurationError`` naming every missing part, so that a
        command never falls back on a server nobody chose.
        """
        missing = [
            variable
            for variable, needed, value in (
                ("TOPCHEF_BROKER_URL", broker, self.broker_url),
                ("TOPCHEF_DATABASE_URL", database, self.database_url),
            )
            if needed and not value
        ]
        if not missing:
            return self
        here = Path.cwd()
        what = " and ".join(missing) + (" are" if len(missing) > 1 else " is")
        if "TOPCHEF_BROKER_URL" in missing and (here / STATE_DIR).is_dir():
            situation = f"the TopChef stack in {here} is not running, and {what} not set"
        else:
            situation = f"no TopChef stack in {here}, and {what} not set"
        raise ConfigurationError(
            f"{situation}: start one here with `topchef up`, or set {' and '.join(missing)}"
        )


_FIELDS: dict[str, type] = {
    "database_url": str,
    "broker_url": str,
    "maintainer_name": str,
    "maintainer_email": str,
    "documentation_url": str,
    "source_code_repository_url": str,
    "version": str,
    "lease_seconds": float,
    "beat_interval": float,
    "outbox_grace_seconds": float,
    "visibility_timeout": float,
    "metrics_port": int,
    "metrics_host": str,
    "api_token": str,
    "api_max_body_bytes": int,
    "worker_key": str,
    "api_base_url": str,
    "registration_signing_key": str,
    "registration_public_key": str,
    "artifacts_url": str,
}

#: Secrets whose blank value is a mistake to refuse, never "none": a token of
#: spaces, read as no token, would leave open what its operator meant to close.
_SECRETS = frozenset({"api_token"})


def _parse(name: str, raw: str, kind: type) -> object:
    if name == "api_base_url":
        return base_url(raw, PREFIX + name.upper())
    if kind is str:
        return raw
    if kind is int:
        return _parse_int(name, raw)
    try:
        value = float(raw)
    except ValueError:
        raise ConfigurationError(f"{PREFIX}{name.upper()} must be a number, got {raw!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise ConfigurationError(f"{PREFIX}{name.upper()} must be > 0, got {raw!r}")
    return value


#: Inclusive bounds of whole-number settings; any other must be >= 0.
_INT_BOUNDS: dict[str, tuple[int, int | None]] = {
    "metrics_port": (0, 65535),
    "api_max_body_bytes": (1, None),
}


def _parse_int(name: str, raw: str) -> int:
    variable = PREFIX + name.upper()
    try:
        value = int(raw)
    except ValueError:
        raise ConfigurationError(f"{variable} must be a whole number, got {raw!r}") from None
    low, high = _INT_BOUNDS.get(name, (0, None))
    if value < low or (high is not None and value > high):
        allowed = f">= {low}" if high is None else f"from {low} to {high}"
        raise ConfigurationError(f"{variable} must be {allowed}, got {raw!r}")
    return value


#: Printable ASCII that RFC 3986 keeps out of URLs.
_NOT_IN_URLS = frozenset('"<>\\^`{|}')


def base_url(text: str, source: str) -> str:
    """``text`` as the gateway's base URL: ``http(s)://host[:port][/path]``, no trailing ``/``.

    Refused, naming ``source``, when links built on it could not be followed:
    no scheme or host, credentials, a query or a fragment, or characters a URL
    may not hold.
    """
    text = text.strip()
    try:
        parts = urlsplit(text)
        port_ok = parts.port is None or parts.port > 0
    except ValueError:
        parts, port_ok = None, False
    if (
        parts is None
        or not port_ok
        or parts.scheme not in ("http", "https")
        or not parts.hostname
        or parts.username is not None
        or parts.query
        or parts.fragment
        or "?" in text
        or "#" in text
        or any(not (33 <= ord(char) < 127) or char in _NOT_IN_URLS for char in text)
    ):
        raise ConfigurationError(
            f"{source} must be the URL clients reach the API at, such as "
            f"https://lab.example/topchef (no query, no credentials), got {text[:200]!r}"
        )
    return text.rstrip("/")
