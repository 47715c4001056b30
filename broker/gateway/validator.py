"""``/validator``: check an object against a JSON Schema on the server.

For clients without a JSON Schema library (LabVIEW). The schema is compiled
by the same safe contract code services use: no remote ``$ref`` is fetched,
and patterns run in linear time.
"""

from __future__ import annotations

from typing import Any

from flask import Flask, Response

from broker.contract import compile_contract
from broker.gateway.envelope import envelope, json_body, require

#: What ``POST /validator`` must carry (TopChef's ``validator_schema``).
VALIDATOR_SCHEMA: dict[str, Any] = {
    "title": "JSON Schema Validator",
    "description": "The schema that a POST to /validator must satisfy",
    "type": "object",
    "properties": {"schema": {"type": "object"}, "object": {}},
    "required": ["schema", "object"],
}


def register(app: Flask) -> None:
    app.add_url_rule("/validator", "validator", describe, methods=["GET"])
    app.add_url_rule("/validator", "validate", validate, methods=["POST"])


def describe() -> Response:
    return envelope({}, meta={"validator_schema": VALIDATOR_SCHEMA})


def validate() -> Response:
    """200 when ``object`` satisfies ``schema``; 400 naming the failing path otherwise."""
    body = json_body()
    require(body, ["schema", "object"])
    compile_contract(body["schema"], source="schema").validate(body["object"], source="object")
    return envelope({"status": "Validation was successful"})
