"""The optional bearer token (``TOPCHEF_API_TOKEN``)."""

from __future__ import annotations

import hmac

from flask import request

from broker.gateway.errors import ForbiddenError, UnauthorizedError

#: The one route anyone may read: what this API is and where its documentation is.
OPEN = frozenset({("GET", "/"), ("HEAD", "/")})


def check_token(token: str) -> None:
    """Raise unless the request carries ``Authorization: Bearer <token>`` (when one is set).

    The comparison takes the same time however much of the token matches.
    """
    if not token or (request.method, request.path) in OPEN:
        return
    scheme, _, credentials = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not credentials.strip():
        raise UnauthorizedError()
    if not hmac.compare_digest(credentials.strip().encode(), token.encode()):
        raise ForbiddenError()
