"""What waitress refuses before the application sees a request, in the gateway's error envelope.

Waitress reads each request before handing it on, and answers by itself a
body over its limit (413, ``max_request_body_size``: a declared
``Content-Length`` at once, a chunked body as soon as it passes the limit),
headers too large (431), malformed HTTP (400), a transfer coding it does not
know (501), and an application that failed before answering (500). It writes
those as text; a TopChef client reads ``{"errors": [...]}``. Waitress has no
documented setting for its error bodies, so its channel is given the one
class it takes its error answers from (``error_task_class``, an attribute of
its ``HTTPChannel`` since waitress 1.0); ``tests/test_gateway_exposure.py``
checks the 413s, a malformed request and an unknown coding through a real
``topchef api``, so a waitress that changed this would fail there.

Details are ours, never waitress's text: that quotes parts of the request
(a malformed header line, a method), and nothing a request carries is sent back.
"""

from __future__ import annotations

from typing import Any

from waitress.channel import HTTPChannel  # type: ignore[import-untyped]
from waitress.task import ErrorTask  # type: ignore[import-untyped]

from broker.errors import TopChefError
from broker.gateway.envelope import error_document
from broker.gateway.errors import PayloadTooLargeError, ServerError

#: What each refusal of waitress's means to a client, by status code.
_DETAILS = {
    400: "The request is not well-formed HTTP (its request line, a header or its chunked body)",
    431: "The request's headers are larger than this API accepts",
    501: "The request's Transfer-Encoding is not one this API accepts (only chunked)",
    500: "An unexpected error; see the gateway's log",
}


def refusal(code: int, reason: str, body_limit: int) -> TopChefError:
    """The error a client is told for waitress's refusal ``code`` (``reason``: its title)."""
    if code == 413:
        return PayloadTooLargeError(body_limit)
    return ServerError(code, reason, _DETAILS.get(code, reason))


class _Refusal(ErrorTask):  # type: ignore[misc]
    """Waitress's answer to a request it refused, written as the gateway writes errors."""

    def execute(self) -> None:
        error = self.request.error
        limit = int(self.channel.body_limit)
        body = error_document(refusal(int(error.code), str(error.reason), limit)).encode()
        self.status = f"{error.code} {error.reason}"
        self.response_headers.extend(
            [("Content-Type", "application/json"), ("X-Content-Type-Options", "nosniff")]
        )
        self.set_close_on_finish()
        self.content_length = len(body)
        self.write(body)


class RefusingChannel(HTTPChannel):  # type: ignore[misc]
    """Waitress's connection, answering the requests it refuses with ``_Refusal``."""

    error_task_class = _Refusal
    #: The gateway's own limit (``TOPCHEF_API_MAX_BODY_BYTES``), which a 413 names.
    body_limit = 0


def answer_refusals_in_json(server: Any, body_limit: int) -> None:
    """Have ``server`` (what ``waitress.create_server`` returned) refuse in the error envelope."""
    if not isinstance(getattr(server, "channel_class", None), type) or not issubclass(
        server.channel_class, HTTPChannel
    ):
        raise TypeError(f"not a waitress server with one listening socket: {server!r}")
    server.channel_class = type("RefusingChannel", (RefusingChannel,), {"body_limit": body_limit})
