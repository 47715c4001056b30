"""Who may reach a server a ``topchef`` command starts: this PC alone, or the network with a login.

An HTTP server on a loopback address is this PC's; on any other address
(``0.0.0.0``, a LAN address, a name that resolves to one) anyone on the
network reaches it. Without authentication that means anyone may submit and
cancel jobs through the API, or read every job's parameters in Flower: so
such a start is refused, in one line that says why and how to go on, unless
its operator says so with ``--allow-unauthenticated``. One rule, for each
server that serves people (``topchef api``, ``topchef flower``).

``topchef up --listen`` is not one of them: its Redis always asks for the
password it keeps (``broker.ops.network``). The metrics endpoint listens on
loopback unless ``TOPCHEF_METRICS_HOST`` opens it, which is a setting made for
exactly that (a scraper on another machine), and serves counts, never parameters.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Mapping

from broker.errors import ConfigurationError

#: The flag that starts an unauthenticated server on the network anyway.
FORCE_FLAG = "--allow-unauthenticated"
#: Flower's own variables for its login (``--basic-auth``, ``--auth``): it reads them itself.
FLOWER_BASIC_AUTH = "FLOWER_BASIC_AUTH"
FLOWER_AUTH = "FLOWER_AUTH"


class OpenToNetworkError(ConfigurationError):
    """A server about to listen beyond this PC with no authentication, not forced."""

    def __init__(self, server: str, host: str, how: str) -> None:
        self.server = server
        self.host = host
        super().__init__(
            f"{server} on {host or 'every interface'} with no authentication would let anyone "
            f"on the network in: {how}, listen on 127.0.0.1, or pass {FORCE_FLAG} if anyone may"
        )


def is_loopback(host: str) -> bool:
    """Whether only this PC reaches a server listening on ``host`` (an address or a name).

    A name counts when every address it resolves to is a loopback one; an
    empty host is every interface.
    """
    host = host.strip().strip("[]")
    if not host:
        return False
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    try:
        found = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as error:
        raise ConfigurationError(f"cannot listen on {host!r}: {error}") from None
    addresses = {str(entry[4][0]).partition("%")[0] for entry in found}
    return bool(addresses) and all(ipaddress.ip_address(a).is_loopback for a in addresses)


def require_guarded(server: str, host: str, *, guarded: bool, forced: bool, how: str) -> bool:
    """Refuse ``server`` on ``host`` unguarded beyond this PC, unless ``forced``.

    ``how``: what the operator sets to guard it. Returns whether the server is
    open to the network without authentication (forced), for the caller to say so.
    """
    if guarded or is_loopback(host):
        return False
    if not forced:
        raise OpenToNetworkError(server, host, how)
    return True


def flower_logins(environ: Mapping[str, str]) -> tuple[str | None, bool]:
    """Flower's basic-auth value (``user:password[,user:password…]``), and whether it has a login.

    A login is ``FLOWER_BASIC_AUTH`` or ``FLOWER_AUTH`` (Flower's OAuth); a
    blank or malformed one is refused, never read as none: Flower would read
    it as a login nobody can give, and its operator as a door that is closed.
    """
    basic = environ.get(FLOWER_BASIC_AUTH)
    oauth = environ.get(FLOWER_AUTH)
    for name, value in ((FLOWER_BASIC_AUTH, basic), (FLOWER_AUTH, oauth)):
        if value is not None and not value.strip():
            raise ConfigurationError(f"{name} is set but blank: give it a value, or unset it")
    if basic is not None:
        basic = basic.strip()
        for pair in basic.split(","):
            user, colon, password = pair.partition(":")
            if not (colon and user.strip() and password.strip()):
                raise ConfigurationError(
                    f"{FLOWER_BASIC_AUTH} must be user:password (several separated by commas), "
                    f"each with a user and a password"
                )
    return basic, basic is not None or oauth is not None
