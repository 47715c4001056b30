"""Every URL the gateway writes: ``links`` in its answers, and ``Location``.

A link starts with the configured base URL (``TOPCHEF_API_BASE_URL``, ``topchef
api --base-url``) or, when none is, it is an absolute path (``/jobs/<id>``),
which a client resolves against the URL it sent the request to (RFC 3986).
Never with the request's ``Host`` header: whoever sends a request chooses it,
and a link built on it would point that client, or whoever reads a cached
answer, wherever the sender liked. TopChef's own clients build their URLs from
the base URL they were given and read no link (their sources say so), so
either form serves them.

Paths come from Flask's ``url_for`` (each value quoted), under the prefix the
request came by (``/legacy``: ``SCRIPT_NAME``, set by the gateway alone).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any
from urllib.parse import urlencode

from flask import current_app, request, url_for


def link(endpoint: str, **values: Any) -> str:
    """The URL of ``endpoint`` with ``values`` in its path."""
    # The gateway's settings (``context.gateway()``, which imports this module's users).
    base = str(current_app.extensions["topchef"].settings.api_base_url)
    return base + url_for(endpoint, **values)


def here(query: Iterable[tuple[str, str]] | None = None) -> str:
    """The URL of this request's resource, with ``query`` (default: the request's own).

    Rebuilt from the route that answered and the query as parsed, so what a
    client put in its request comes back quoted, never verbatim.
    """
    pairs = list(request.args.items(multi=True) if query is None else query)
    path = link(str(request.endpoint), **(request.view_args or {}))
    return f"{path}?{urlencode(pairs)}" if pairs else path
