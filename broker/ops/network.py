"""How other PCs reach a ``topchef up`` stack: its embedded Redis on the network.

``topchef up --listen ADDRESS`` has the embedded Redis listen on ADDRESS too
(its unix socket stays, for this PC), behind a password. The port and the
password are chosen at the first such start and kept in the stack's directory
(``.topchef/network.json``, readable by its owner alone), so that the URL a
second PC was given stays true across every restart of the stack: a worker
there reconnects by itself instead of needing a new URL.

Without ``--listen`` nothing listens on the network, as before: the unix
socket's file permissions (its owner only) are the only way in, and no
password is needed or printed.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import json
import os
import re
import secrets
import shlex
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from broker.errors import ConfigurationError
from broker.settings import Settings, masked
from broker.trust.signing import read_public

#: Where a stack keeps its port and password, in its ``.topchef`` directory.
NETWORK_FILE = "network.json"
#: Owner-only: the file, and the broker URL announced beside it, hold the password.
PRIVATE = 0o600
#: A generated password: hex, so that it goes into a URL and a shell unquoted.
_PASSWORD = re.compile(r"[0-9a-f]{32,128}")
_WILDCARDS = {ipaddress.ip_address("0.0.0.0"), ipaddress.ip_address("::")}


def listen_address(text: str) -> str:
    """``text`` as an address Redis can listen on (an IP address of this PC, or a wildcard)."""
    try:
        return str(ipaddress.ip_address(text.strip()))
    except ValueError:
        raise ConfigurationError(
            f"--listen takes an IP address of this PC (0.0.0.0 for every interface), got {text!r}"
        ) from None


@dataclass(frozen=True, slots=True)
class Listen:
    """What ``topchef up --listen ADDRESS [--port N]`` asks for."""

    address: str
    port: int | None = None


@dataclass(frozen=True, slots=True)
class NetworkAccess:
    """The port and password of a stack's Redis on the network, kept across restarts."""

    port: int
    password: str

    @classmethod
    def load(cls, state: Path) -> NetworkAccess | None:
        """What ``state`` keeps, or None if the stack never listened; a damaged file is refused."""
        path = state / NETWORK_FILE
        try:
            text = path.read_text()
        except FileNotFoundError:
            return None
        os.chmod(path, PRIVATE)  # copied around with a looser mode: the password stays ours
        try:
            kept = json.loads(text)
            port, password = kept["port"], kept["password"]
        except (ValueError, TypeError, KeyError):
            port = password = None
        if not (
            type(port) is int  # not a bool, which is an int too
            and 0 < port < 65536
            and isinstance(password, str)
            and _PASSWORD.fullmatch(password)
        ):
            raise ConfigurationError(
                f"{path} is damaged (it must hold a port and a password): remove it, "
                "and this stack chooses new ones; every other PC then needs the new URL"
            )
        return cls(port, password)

    @classmethod
    def kept_in(cls, state: Path, listen: Listen) -> NetworkAccess:
        """The access kept in ``state``, made at the first ``--listen``; ``--port`` replaces it.

        The port is checked free on ``listen.address`` now, so that a port
        another program took since is refused in words, not by Redis's log.
        """
        kept = cls.load(state)
        port = listen.port or (kept.port if kept else _free_port(listen.address))
        access = cls(port, kept.password if kept else secrets.token_hex(20))
        _check_free(listen.address, port, chosen=listen.port is not None)
        if access != kept:
            access._save(state)
        return access

    def url(self, host: str) -> str:
        """The ``TOPCHEF_BROKER_URL`` of this access at ``host``."""
        return f"redis://:{self.password}@{_url_host(host)}:{self.port}/0"

    def _save(self, state: Path) -> None:
        state.mkdir(parents=True, exist_ok=True)
        kept = {"port": self.port, "password": self.password}
        write_private(state / NETWORK_FILE, json.dumps(kept))


def write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path``, readable by its owner alone from its first byte."""
    spare = path.with_name(f".{path.name}.{os.getpid()}")
    descriptor = os.open(spare, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, PRIVATE)
    with os.fdopen(descriptor, "w") as handle:
        os.fchmod(handle.fileno(), PRIVATE)  # O_CREAT's mode spares a file that was there
        handle.write(text + "\n")
    os.replace(spare, path)


def reachable_host(address: str) -> str:
    """The address another PC uses for a Redis listening on ``address``.

    A wildcard listens on every interface: the one this PC's outgoing traffic
    leaves by is the lab network's, as a rule (a UDP socket's ``connect``
    sends nothing; it only chooses the route). Without a route, this PC's name.
    """
    ip = ipaddress.ip_address(address)
    if ip not in _WILDCARDS:
        return address
    family, probe = (
        (socket.AF_INET, "192.0.2.1") if ip.version == 4 else (socket.AF_INET6, "2001:db8::1")
    )
    with contextlib.suppress(OSError), socket.socket(family, socket.SOCK_DGRAM) as udp:
        udp.connect((probe, 9))
        found = str(udp.getsockname()[0])
        if not ipaddress.ip_address(found).is_loopback:
            return found
    return socket.gethostname()


def another_pc(
    settings: Settings, listen: Listen | None, state: Path, *, embedded: bool
) -> list[str]:
    """What ``topchef up`` tells its user about adding a PC: what to set there, or how to open up.

    ``embedded``: the broker is the Redis ``topchef up`` started (no
    ``TOPCHEF_BROKER_URL``). A lab worker needs the broker and its credential; a producer
    needs the database too, or the HTTP API where the database is on this PC
    only (SQLite).
    """
    access = None if listen is None else NetworkAccess.load(state)  # kept by the start
    if listen is not None and access is not None:
        broker = access.url(reachable_host(listen.address))
        where = f"listening on {listen.address}:{access.port}; password in {state / NETWORK_FILE}"
    elif embedded:
        return [
            "Only this PC can reach this stack: `topchef up --listen 0.0.0.0` opens it "
            "to workers on other PCs."
        ]
    elif only_here(settings.broker_url):
        return [
            f"Only this PC can reach the broker TOPCHEF_BROKER_URL names "
            f"({masked(settings.broker_url)}): workers on other PCs need one they can reach."
        ]
    else:
        broker, where = settings.broker_url, "as TOPCHEF_BROKER_URL is set here"
    lines = [
        f"Workers on another PC need the broker ({where}), the key that checks jobs,",
        "and a credential of their own:",
        "  topchef workers enroll NAME   # here: writes NAME.key; copy it to that PC alone",
        f"  export TOPCHEF_BROKER_URL={shlex.quote(broker)}",
        *_public_key_line(settings),
        "  export TOPCHEF_WORKER_KEY=/path/to/NAME.key",
        "  topchef worker YOUR_MODULE",
    ]
    if only_here(settings.database_url):
        lines.append(
            "Producers on another PC: the HTTP API (`topchef api --host 0.0.0.0` here, with "
            "TOPCHEF_API_TOKEN set); this stack's database is on this PC only."
        )
    else:
        lines.append(
            "Producers there need the database too, and a copy of the private signing key "
            f"{settings.registration_signing_key or '(TOPCHEF_REGISTRATION_SIGNING_KEY)'} "
            "(mode 600; never on a lab PC):"
        )
        lines.append(f"  export TOPCHEF_DATABASE_URL={shlex.quote(settings.database_url)}")
        lines.append("  export TOPCHEF_REGISTRATION_SIGNING_KEY=/path/to/registration.key")
    return lines


def _public_key_line(settings: Settings) -> list[str]:
    """The public registration key, as a worker elsewhere sets it (text: nothing to copy)."""
    if not settings.registration_public_key:
        return []
    text = read_public(settings.registration_public_key).text
    return [f"  export TOPCHEF_REGISTRATION_PUBLIC_KEY={text}"]


def only_here(url: str) -> bool:
    """Whether ``url`` names a server only this PC can reach (a unix socket, loopback, a file)."""
    parts = urlsplit(url)
    if parts.scheme in ("unix", "redis+socket") or parts.scheme.startswith("sqlite"):
        return True
    host = parts.hostname or ""
    if host in ("", "localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _url_host(host: str) -> str:
    with contextlib.suppress(ValueError):
        if ipaddress.ip_address(host).version == 6:
            return f"[{host}]"
    return host


def _family(address: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ipaddress.ip_address(address).version == 6 else socket.AF_INET


def _free_port(address: str) -> int:
    """A port nothing listens on at ``address`` now: the kernel's choice."""
    try:
        with _bound(address, 0) as probe:
            return int(probe.getsockname()[1])
    except OSError as error:
        raise _unbindable(address, error) from None


def _check_free(address: str, port: int, *, chosen: bool) -> None:
    """Refuse, in words, an address or a port that Redis could not listen on."""
    try:
        with _bound(address, port):
            pass
    except OSError as error:
        if error.errno != errno.EADDRINUSE:
            raise _unbindable(address, error) from None
        whose = "given with --port" if chosen else f"kept in {NETWORK_FILE}"
        raise ConfigurationError(
            f"port {port} ({whose}) on {address} is taken by another program: stop it, or "
            "choose another with --port (every other PC then needs the new URL)"
        ) from None


def _unbindable(address: str, error: OSError) -> ConfigurationError:
    return ConfigurationError(
        f"cannot listen on {address}: {error.strerror} (is it an address of this PC?)"
    )


@contextlib.contextmanager
def _bound(address: str, port: int) -> Iterator[socket.socket]:
    with socket.socket(_family(address), socket.SOCK_STREAM) as probe:
        # As Redis binds it: a port the last run left in TIME_WAIT counts as free.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind((address, port))
        yield probe
