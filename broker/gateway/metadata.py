"""``GET /``: what this API is, who maintains it, and where to go next."""

from __future__ import annotations

from flask import Flask, Response, url_for

from broker.gateway.context import gateway
from broker.gateway.envelope import envelope
from broker.models.api_metadata import APIMetadata


def register(app: Flask) -> None:
    app.add_url_rule("/", "metadata", metadata, methods=["GET"])


def metadata() -> Response:
    about = APIMetadata(gateway().settings)
    data = {
        "maintainer_name": about.maintainer_name,
        "maintainer_email": about.maintainer_email,
        "documentation_url": about.documentation_url,
        "source_code_repository_url": about.source_code_repository_url,
        "version": about.version,
    }
    links = {
        "services": url_for("services", _external=True),
        "jobs": url_for("jobs", _external=True),
        "validator": url_for("validator", _external=True),
        "openapi": url_for("openapi", _external=True),
    }
    meta = {"auth": "bearer" if gateway().settings.api_token else "none"}
    return envelope(data, meta=meta, links=links)
