"""RQ's job function (served by ``rq worker``, forking or ``SimpleWorker``)."""

from __future__ import annotations

from typing import Any

from bench.peers import mark_done


def noop(parameters: dict[str, Any]) -> None:
    mark_done()
