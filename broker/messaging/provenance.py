"""What ran a job, as a worker reports it once per process and handler module.

Every job a worker process runs with one handler module has the same
provenance, so the worker sends it once on the state stream (a ``provenance``
entry) and each of its status reports names it by its digest; the mirror
stores it once (``run_provenance``) and the job refers to it. The digest is
computed from the record itself, so the mirror can check that an entry names
what it says: the stream is not trusted.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class RunProvenance:
    """A worker process (``host:pid``), the handler's module, its code version, Python."""

    worker: str
    module: str
    #: The installed distribution's version, or the git commit of a checkout; None if unknown.
    code_version: str | None
    python: str

    @property
    def digest(self) -> str:
        text = json.dumps(self.as_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunProvenance:
        """The record a stream entry carries; ``ValueError`` unless it is one."""
        fields = ("worker", "module", "code_version", "python")
        if set(data) != set(fields):
            raise ValueError(f"a run's provenance has the fields {', '.join(fields)}")
        values = {name: data[name] for name in fields}
        for name, value in values.items():
            if not _storable(value, _LONGEST[name]) and not (
                name == "code_version" and value is None
            ):
                raise ValueError(f"provenance {name} must be a short string, got {value!r:.80}")
        return cls(**values)


#: The longest each field may be: what its column holds (``RunProvenanceRow``).
_LONGEST = {"worker": 255, "module": 255, "code_version": 100, "python": 100}


def _storable(value: object, longest: int) -> bool:
    """Short text SQL can store: no NUL, no lone surrogates."""
    if not (isinstance(value, str) and 0 < len(value) <= longest) or "\x00" in value:
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
