"""Celery task messages and their ``task-sent`` events, as kombu's Redis transport stores them.

The format is Celery's documented task protocol (version 2) inside kombu's
Redis envelope: a JSON object whose ``body`` is the base64 of a JSON body. Most
of each message is the same for every job of a queue — the header names, the
origin, the routing — so each shape is serialised once (``_Template``) and
only what varies (ids, arguments, clock, timestamps) is encoded per message:
``json.dumps`` of the whole envelope, twice per job, was most of the cost of
publishing a sweep. Being hand-built, the output is pinned to Celery's own:
``tests/test_wire_celery.py`` compares it, field by field, with the message
and event Celery puts on Redis for the same task.
"""

from __future__ import annotations

import base64
import json
import os
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

#: What Celery keeps of a task's arguments in its headers and events (its default).
REPR_MAX = 1024
#: Celery's event exchange, and the routing key of a ``task-sent`` event.
EVENT_EXCHANGE = "celeryev"
SENT_ROUTING_KEY = "task.sent"

_EMBED = json.dumps({"callbacks": None, "errbacks": None, "chain": None, "chord": None})
_ENVELOPE = {"content-encoding": "utf-8", "content-type": "application/json"}


class _Template:
    """A JSON object of known keys whose fixed values are serialised once.

    ``fill`` takes the varying values already as JSON text, in the order the
    keys were given.
    """

    def __init__(self, fixed: Mapping[str, Any], varying: Sequence[str]) -> None:
        head = json.dumps(dict(fixed))[:-1] + (", " if fixed else "")
        self._parts = [head + json.dumps(varying[0]) + ": "]
        self._parts += [", " + json.dumps(key) + ": " for key in varying[1:]]

    def fill(self, *values: str) -> str:
        return "".join(part + value for part, value in zip(self._parts, values, strict=True)) + "}"


@dataclass(frozen=True, slots=True)
class _Shape:
    """The templates that differ by task name, shadow name and queue."""

    headers: _Template
    properties: _Template
    event: _Template


class TaskEncoder:
    """Encodes task messages and ``task-sent`` events for one publishing process."""

    def __init__(self, origin: str, utcoffset: int, clock: Any) -> None:
        self._origin = origin
        self._utcoffset = utcoffset
        self._clock = clock
        self._shapes: dict[tuple[str, str, str, int], _Shape] = {}
        # The same for every message this process sends.
        self._envelope = _Template(_ENVELOPE, ["body", "headers", "properties"])
        self._event_envelope = _Template(
            {**_ENVELOPE, "headers": {"hostname": origin}}, ["body", "properties"]
        )
        event_properties = {
            "delivery_mode": 1,
            "delivery_info": {"exchange": EVENT_EXCHANGE, "routing_key": SENT_ROUTING_KEY},
            "priority": 0,
            "body_encoding": "base64",
        }
        self._event_properties = _Template(event_properties, ["delivery_tag"])

    def encode(
        self,
        task_id: str,
        task_name: str,
        shadow: str,
        queue: str,
        kwargs: dict[str, Any],
        event: bool = True,
        priority: int = 0,
    ) -> tuple[str, str | None]:
        """The task message for ``kwargs``, and its ``task-sent`` event if ``event``.

        ``priority`` is kombu's (0 is taken first), as Celery's
        ``send_task(priority=…)`` takes it.
        """
        key = (task_name, shadow, queue, priority)
        shape = self._shapes.get(key)
        if shape is None:
            shape = self._shapes[key] = self._shape(task_name, shadow, queue, priority)
        task = json.dumps(task_id)
        kwargs_repr = json.dumps(bounded_repr(kwargs))
        body = f"[[], {json.dumps(kwargs)}, {_EMBED}]"
        message = self._envelope.fill(
            _base64(body),
            shape.headers.fill(task, task, kwargs_repr),
            shape.properties.fill(task, _tag()),
        )
        if not event:
            return message, None
        event_body = shape.event.fill(
            str(self._clock.forward()), task, task, kwargs_repr, repr(time.time())
        )
        properties = self._event_properties.fill(_tag())
        return message, self._event_envelope.fill(_base64(event_body), properties)

    def _shape(self, task_name: str, shadow: str, queue: str, priority: int) -> _Shape:
        headers: dict[str, Any] = {
            "lang": "py",
            "task": task_name,
            # Flower and the logs show the service, not the generic task name.
            "shadow": shadow,
            "eta": None,
            "expires": None,
            "group": None,
            "group_index": None,
            "retries": 0,
            "timelimit": [None, None],
            "parent_id": None,
            "argsrepr": "()",
            "origin": self._origin,
            "ignore_result": True,
            "replaced_task_nesting": 0,
            "stamped_headers": None,
            "stamps": {},
        }
        properties: dict[str, Any] = {
            "reply_to": "",
            "delivery_mode": 2,
            "delivery_info": {"exchange": "", "routing_key": queue},
            "priority": priority,
            "body_encoding": "base64",
        }
        event: dict[str, Any] = {
            "hostname": self._origin,
            "utcoffset": self._utcoffset,
            "pid": os.getpid(),
            "parent_id": None,
            "name": task_name,
            "args": "()",
            "retries": 0,
            "eta": None,
            "expires": None,
            "queue": queue,
            "exchange": "",
            "routing_key": queue,
            "type": "task-sent",
        }
        return _Shape(
            headers=_Template(headers, ["id", "root_id", "kwargsrepr"]),
            properties=_Template(properties, ["correlation_id", "delivery_tag"]),
            event=_Template(event, ["clock", "uuid", "root_id", "kwargs", "timestamp"]),
        )


def _base64(text: str) -> str:
    return '"' + base64.b64encode(text.encode()).decode() + '"'


def _tag() -> str:
    return f'"{uuid.uuid4()}"'


def bounded_repr(value: object) -> str:
    """What Flower shows of a job's arguments: JSON data, so ``repr`` is safe; cut short."""
    text = repr(value)
    return text if len(text) <= REPR_MAX else text[: REPR_MAX - 3] + "..."
