"""``GET /``: what this API is, who maintains it, and where to go next."""

from __future__ import annotations

from flask import Flask, Response

from broker.gateway.context import gateway
from broker.gateway.envelope import envelope
from broker.gateway.links import link
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
        "services": link("services"),
        "jobs": link("jobs"),
        "validator": link("validator"),
        "openapi": link("openapi"),
    }
    meta = {"auth": "bearer" if gateway().settings.api_token else "none"}
    return envelope(data, meta=meta, links=links)
