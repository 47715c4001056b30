"""``GET /artifacts/<digest>``: the bytes of an artifact a job's results name.

Served from the gateway's store (``TOPCHEF_ARTIFACTS_URL``) with Range
requests, so a client can read a slice of a large array or resume a
download; the ETag is the digest, the bytes' SHA-256, which any client can
check. Behind the gateway's token like every route but ``GET /``.
"""

from __future__ import annotations

from flask import Flask, Response, send_file

from broker.artifacts.references import DIGEST
from broker.gateway.context import gateway
from broker.gateway.errors import ArtifactNotFoundError


def register(app: Flask) -> None:
    app.add_url_rule("/artifacts/<digest>", "artifact", serve_artifact, methods=["GET"])


def serve_artifact(digest: str) -> Response:
    store = gateway().producer.artifacts
    if not DIGEST.fullmatch(digest):
        raise ArtifactNotFoundError(digest, "is not an artifact's digest (sha256:<64 hex>)")
    if store is None:
        raise ArtifactNotFoundError(digest, "is not here: this gateway has no artifact store")
    path = store.path(digest)
    if not path.is_file():
        raise ArtifactNotFoundError(digest, "is not in the artifact store")
    response = send_file(
        path,
        mimetype="application/octet-stream",
        conditional=True,
        etag=digest.removeprefix("sha256:"),
        max_age=365 * 24 * 3600,  # content-addressed: the bytes of a digest never change
    )
    response.headers["Accept-Ranges"] = "bytes"
    return response
