"""A service's schemas as one short digest: what a job was validated against.

Schemas never change after a service is created, so the fingerprint is
computed once, when it is, and every job of the service shares it. Keys are
sorted, so the same schemas give the same fingerprint whichever database
stored them (PostgreSQL's JSONB does not keep key order).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any


def schema_fingerprint(registration: dict[str, Any], result: dict[str, Any]) -> str:
    """``sha256:`` and the first 32 hex digits of the digest of both schemas."""
    text = json.dumps(
        {"job_registration_schema": registration, "job_result_schema": result},
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=True,
    )
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()[:32]
