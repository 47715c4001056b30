"""The smallest lab worker: returns its parameters.

Create the service once (its schemas are below), then serve it:

    topchef services create Echo --parameters '{"type": "object"}' --results '{"type": "object"}'
    topchef worker workers.echo
"""

from __future__ import annotations

from typing import Any

from broker.worker import handles

NAME = "Echo"
DESCRIPTION = "Returns the message it was given."
REGISTRATION_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"message": {"type": "string"}},
    "required": ["message"],
}
RESULT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"message": {"type": "string"}},
    "required": ["message"],
}


@handles(NAME)
def echo(parameters: dict[str, Any]) -> dict[str, Any]:
    return {"message": parameters["message"]}
