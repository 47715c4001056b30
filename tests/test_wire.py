"""Task messages built from templates decode to what Celery and Flower read."""

from __future__ import annotations

import base64
import json

from broker.messaging.celery_wire import REPR_MAX, TaskEncoder


class Clock:
    def __init__(self) -> None:
        self.value = 41

    def forward(self) -> int:
        self.value += 1
        return self.value


AWKWARD = {"job_id": "j-1", "parameters": {"text": 'quote " backslash \\ é 😀 \n', "n": [1, 2.5]}}


def _decode(envelope: str) -> tuple[dict, object]:
    message = json.loads(envelope)
    return message, json.loads(base64.b64decode(message["body"]))


def test_a_task_message_carries_its_arguments_ids_and_routing():
    encoder = TaskEncoder("gen1@lab", 0, Clock())
    raw, _ = encoder.encode("j-1.1", "topchef.job", 'Rabi "7 T" (job)', "q.1", AWKWARD)
    message, body = _decode(raw)

    embed = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}
    assert body == [[], AWKWARD, embed]
    headers, properties = message["headers"], message["properties"]
    assert (headers["task"], headers["id"], headers["root_id"]) == ("topchef.job", "j-1.1", "j-1.1")
    assert headers["shadow"] == 'Rabi "7 T" (job)'
    assert headers["kwargsrepr"] == repr(AWKWARD)
    assert headers["origin"] == "gen1@lab"
    assert properties["correlation_id"] == "j-1.1"
    assert properties["delivery_info"] == {"exchange": "", "routing_key": "q.1"}
    assert (message["content-type"], message["content-encoding"]) == ("application/json", "utf-8")


def test_each_message_has_its_own_delivery_tag_and_each_event_a_later_clock():
    encoder = TaskEncoder("gen1@lab", 0, Clock())
    first, first_event = encoder.encode("a", "t", "s", "q", {"x": 1})
    second, second_event = encoder.encode("b", "t", "s", "q", {"x": 2})

    tags = {json.loads(m)["properties"]["delivery_tag"] for m in (first, second)}
    assert len(tags) == 2
    events = [_decode(e)[1] for e in (first_event, second_event)]
    assert [(e["uuid"], e["clock"], e["type"]) for e in events] == [
        ("a", 42, "task-sent"),
        ("b", 43, "task-sent"),
    ]
    assert events[1]["kwargs"] == repr({"x": 2})
    assert json.loads(first_event)["properties"]["delivery_info"]["exchange"] == "celeryev"


def test_long_arguments_are_cut_short_in_what_flower_shows_but_not_in_the_body():
    kwargs = {"parameters": {"text": "x" * 5000}}
    raw, event = TaskEncoder("o", 0, Clock()).encode("a", "t", "s", "q", kwargs)
    message, body = _decode(raw)
    assert len(message["headers"]["kwargsrepr"]) == REPR_MAX
    assert message["headers"]["kwargsrepr"].endswith("...")
    assert body[1] == kwargs
    assert len(_decode(event)[1]["kwargs"]) == REPR_MAX
