"""The ledger: every physical run of a chaos handler, as the handler itself saw it.

The broker's own records (SQL, Redis) are what is under test, so they cannot
witness themselves. Each handler appends a line when it starts and when it is
about to return, to a file named by ``CHAOS_LEDGER``; nothing of the broker
writes or reads it. Lines are appended with ``O_APPEND`` and one ``os.write``
each, under 4 KiB, so lines from many processes and threads never interleave
and a process killed mid-job leaves whole lines only.

A handler does not know its job's id, so a run is matched to its job by what
it was given: the service it serves and its parameters, which carry a token
unique to the job (``key``).
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ENV = "CHAOS_LEDGER"
#: A line longer than this might not be written atomically.
MAX_LINE = 4000

_fds: dict[str, int] = {}
_fds_lock = threading.Lock()


def canonical(value: Any) -> str:
    """One spelling of a JSON value, so that equal documents compare equal as text."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def key(service: str, parameters: Any) -> tuple[str, str]:
    """What a run and its job have in common: the service name and the parameters."""
    return service, canonical(parameters)


def _fd(path: str) -> int:
    with _fds_lock:
        fd = _fds.get(path)
        if fd is None:
            fd = _fds[path] = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        return fd


def record(
    event: str, service: str, parameters: Any, path: str | None = None, **fields: Any
) -> None:
    """Append one event; ``path`` defaults to ``$CHAOS_LEDGER``."""
    target = path or os.environ.get(ENV)
    if not target:
        raise RuntimeError(f"{ENV} is not set: the chaos handlers need a ledger file")
    entry = {"event": event, "service": service, "params": parameters, "pid": os.getpid()}
    entry.update(fields)
    entry["t"] = time.time()
    line = canonical(entry)
    if len(line.encode()) > MAX_LINE:
        # Only a forged message could carry parameters this big: keep the line
        # whole, and unmatchable, rather than risk a torn one.
        entry["params"] = {"sha256": hashlib.sha256(canonical(parameters).encode()).hexdigest()}
        entry["truncated"] = True
        line = canonical(entry)
    os.write(_fd(target), (line + "\n").encode())


@dataclass(frozen=True, slots=True)
class Line:
    """One ledger event, as read back."""

    event: str
    service: str
    params: Any
    pid: int
    t: float
    run: str
    results: Any = None

    @property
    def key(self) -> tuple[str, str]:
        return key(self.service, self.params)


def read(path: Path) -> list[Line]:
    """Every whole line of the ledger (a torn last line, impossible by design, is skipped)."""
    if not path.exists():
        return []
    lines = []
    for raw in path.read_text().splitlines():
        try:
            data = json.loads(raw)
        except json.JSONDecodeError:
            continue
        lines.append(
            Line(
                event=data["event"],
                service=data["service"],
                params=data["params"],
                pid=int(data["pid"]),
                t=float(data["t"]),
                run=str(data.get("run", "")),
                results=data.get("results"),
            )
        )
    return lines
