"""The state stream fuzzed: thousands of malformed entries among valid reports of real jobs.

Each example submits a few real jobs, writes their valid reports (WORKING,
progress, COMPLETED, authenticated as the worker holding the job) interleaved
with generated malformed entries, and runs the real mirror over them one
batch at a time. Asserted: no step raises; every step consumes the next batch
of the stream, in order, and leaves nothing pending, so no entry waits for a
later batch; each valid report is in SQL by the end of the step that read it;
every malformed entry is dead-lettered, or is of a kind that changes no job
(a check-in of a service that does not exist).

Entry ids a writer chooses are fuzzed apart: an entry restamped is appended
again at the end of the stream, so it waits for what is ahead of it there, not
for one batch; what is asserted is that every valid report is applied, none is
stamped ahead of Redis's clock, and the stream takes reports again.
"""

from __future__ import annotations

import contextlib
import json
import uuid
from datetime import datetime, timedelta
from typing import Any

import lab
import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from stack import REAL_REDIS_ONLY, Stack
from test_mirror_poison import lab_stack  # noqa: F401  (the fixture)

from broker.messaging import keys
from broker.messaging.messages import StateMessage
from broker.mirror.admission import KINDS, RefusedEntry, read_message
from broker.mirror.entries import FUTURE_BOUND_MS
from broker.mirror.process import Mirror
from broker.storage.tables import database_now, open_session

pytestmark = [pytest.mark.redis, pytest.mark.slow]

#: Examples, and entries each mirror step reads: sized for two shared cores.
EXAMPLES = 60
BATCH = 25
JOBS_PER_EXAMPLE = 3
TAG = b"fuzz"

STATUSES = {"REGISTERED", "WORKING", "COMPLETED", "ERROR", "CANCELLED"}

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)
not_text = st.integers() | st.floats(allow_nan=False) | st.booleans() | st.lists(st.integers())
not_uuid = st.text(max_size=40).filter(lambda t: not _is_uuid(t)) | not_text
#: For each field of a status report, values that are not valid there, whatever the kind.
WRONG: dict[str, st.SearchStrategy[Any]] = {
    "kind": st.text(max_size=12).filter(lambda k: k not in KINDS) | not_text,
    "service_id": not_uuid | st.none(),
    "job_id": not_uuid | st.none(),
    "status": st.text(max_size=12).filter(lambda s: s not in STATUSES - {"REGISTERED"}) | not_text,
    "results": st.lists(json_values) | st.integers() | st.text(max_size=5),
    "detail": not_text | st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
    "progress": st.floats(min_value=1.0001)
    | st.floats(max_value=-0.0001)
    | st.integers(min_value=2)
    | st.text(max_size=4),
    "message": not_text,
    "attempt": st.integers(max_value=0)
    | st.integers(min_value=2**31)
    | st.floats()
    | st.text(max_size=4)
    | st.booleans(),
    "worker": st.just("")
    | st.text(min_size=256, max_size=300)
    | st.text(max_size=10).map(lambda t: t + "\x00")
    | st.integers(),
    "available": st.integers() | st.text(max_size=4),
    "extra": st.lists(st.integers()) | st.text(max_size=4) | st.integers(),
    "provenance": st.text(max_size=40).filter(lambda t: not _is_digest(t)) | st.integers(),
    "unknown field": st.just(True),
}


def _is_uuid(text: str) -> bool:
    try:
        uuid.UUID(text)
    except ValueError:
        return False
    return True


def _is_digest(text: str) -> bool:
    return 0 < len(text) <= 32 and all(c in "0123456789abcdef" for c in text)


def _m(data: Any) -> dict[bytes, bytes]:
    return {b"m": json.dumps(data).encode()}


def _report(service: uuid.UUID, job: uuid.UUID) -> dict[str, Any]:
    return {
        "kind": "status",
        "service_id": str(service),
        "job_id": str(job),
        "status": "WORKING",
        "worker": "w:1",
    }


@st.composite
def malformed(draw: st.DrawFn, service: uuid.UUID, jobs: list[uuid.UUID]) -> dict[bytes, bytes]:
    """One entry a careless or hostile Redis writer could add."""
    job = draw(st.sampled_from(jobs))
    shape = draw(st.integers(0, 7))
    if shape == 0:  # any field names and values
        return draw(
            st.dictionaries(st.binary(min_size=1, max_size=8), st.binary(max_size=40), min_size=1)
        )
    if shape == 1:  # any JSON in 'm'
        return _m(draw(json_values))
    if shape == 2:  # a report of a real job with one field of the wrong type or range
        report = _report(service, job)
        name = draw(st.sampled_from(sorted(WRONG)))
        report[name] = draw(WRONG[name])
        return _m(report)
    if shape == 3:  # results nested too deep for the contract, or for the JSON parser
        depth = draw(st.integers(65, 3000) | st.just(100_000))
        text = json.dumps({**_report(service, job), "status": "COMPLETED"})
        return {b"m": (text[:-1] + f',"results":{{"a":{"[" * depth + "]" * depth}}}}}').encode()}
    if shape == 4:  # huge numbers
        number = draw(st.integers(5000, 6000).map(lambda n: "9" * n))
        return {b"m": f'{{"kind":"status","attempt":{number}}}'.encode()}
    if shape == 5:  # unknown kinds and statuses
        report = _report(service, job)
        report[draw(st.sampled_from(["kind", "status"]))] = draw(st.text(max_size=10))
        if report["kind"] in KINDS and report["status"] in STATUSES - {"REGISTERED"}:
            report["status"] = "BOGUS"
        return _m(report)
    if shape == 6:  # odd lateness and takes beside a report of a job that does not exist
        report = {**_report(service, uuid.uuid4()), "status": "ERROR"}
        odd = st.binary(max_size=24) | st.sampled_from([b"lost", b"requeued", b"unknown"])
        return {
            **_m(report),
            b"late": draw(odd),
            b"since": draw(odd | st.integers().map(lambda n: str(n).encode())),
            b"take": draw(odd),
        }
    # NUL and lone surrogates where SQL stores them, and text where a number goes
    report = {**_report(service, job), "status": "ERROR"}
    report[draw(st.sampled_from(["results", "worker"]))] = draw(
        st.just({"a": "\x00"}) | st.just({"a": "\ud800"}) | st.just("\ud800\x00")
    )
    return _m(report)


class Fuzz:
    """The stack's services and mirror, and how much each example wrote."""

    def __init__(self, stack: Stack) -> None:
        stack.create_lab_services()
        self.stack = stack
        self.service = stack.service(lab.SQUARE).id
        self.mirror = Mirror(stack.settings, batch_size=BATCH, block_ms=10)
        self.mirror.ensure_group()
        self.valid = 0
        self.malformed = 0
        self.dead = 0
        self.ignored = 0
        self.examples = 0


def _run_example(fuzz: Fuzz, data: st.DataObject) -> None:
    stack, client = fuzz.stack, fuzz.stack.redis
    fuzz.examples += 1
    jobs = stack.producer.submit_many(lab.SQUARE, [{"x": n} for n in range(JOBS_PER_EXAMPLE)])
    valid = {
        job: [
            StateMessage("status", fuzz.service, job, "WORKING", worker="w:1"),
            StateMessage("progress", fuzz.service, job, progress=0.5, message="half"),
            StateMessage(
                "status", fuzz.service, job, "COMPLETED", results={"square": n * n}, worker="w:1"
            ),
        ]
        for n, job in enumerate(jobs)
    }
    bad = data.draw(st.lists(malformed(fuzz.service, jobs), min_size=20, max_size=60))
    queues: list[list[Any]] = [list(reports) for reports in valid.values()] + [list(bad)]
    stream: list[tuple[str, Any]] = []  # ("valid", message) or ("bad", fields), in stream order
    while any(queues):
        index = data.draw(st.sampled_from([i for i, q in enumerate(queues) if q]))
        item = queues[index].pop(0)
        stream.append(("bad", item) if index == len(queues) - 1 else ("valid", item))

    pipeline = client.pipeline(transaction=False)
    for number, (what, item) in enumerate(stream):
        fields = dict(item) if what == "bad" else stack.report_fields(item)
        if what == "bad":
            fields[TAG] = f"{fuzz.examples}:{number}".encode()
        pipeline.xadd(keys.STATE_STREAM, fields)
    ids = pipeline.execute()
    fuzz.valid += sum(1 for what, _ in stream if what == "valid")
    fuzz.malformed += len(bad)

    done = 0
    while done < len(ids):
        read = fuzz.mirror.step()  # raises nothing, whatever the entries
        expected = min(BATCH, len(ids) - done)
        assert read == expected, "a step read other than the next batch"
        assert client.xpending(keys.STATE_STREAM, keys.MIRROR_GROUP)["pending"] == 0
        left = [entry_id for entry_id, _ in client.xrange(keys.STATE_STREAM)]
        assert left == ids[done + read :], "a step left an entry of its batch on the stream"
        for what, item in stream[done : done + read]:
            if what == "valid" and item.status == "COMPLETED":
                assert stack.status(item.job_id) == "COMPLETED", "a valid report waited"
        done += read

    for n, job in enumerate(jobs):
        row = stack.job(job)
        assert (row["status"], row["results"], row["attempts"], row["progress"]) == (
            "COMPLETED",
            {"square": n * n},
            1,
            0.5,
        )
        moves = [(move["from"], move["to"], move["by"]) for move in stack.producer.history(job)]
        assert moves[1:] == [("REGISTERED", "WORKING", "w:1"), ("WORKING", "COMPLETED", "w:1")]

    letters = [fields for _id, fields in client.xrange(keys.DEAD_STATE_STREAM)]
    assert all(TAG in fields for fields in letters), "a valid report was dead-lettered"
    dead = {fields[TAG] for fields in letters}
    for number, (what, item) in enumerate(stream):
        tag = f"{fuzz.examples}:{number}".encode()
        if what == "valid":
            continue
        if tag in dead:
            fuzz.dead += 1
        else:
            fuzz.ignored += 1
            _assert_harmless(item)


def _assert_harmless(fields: dict[bytes, bytes]) -> None:
    """An entry applied, not dead-lettered, must be one that changes no job."""
    try:
        message = read_message(fields)
    except RefusedEntry as refusal:
        raise AssertionError(f"{fields!r} was refused ({refusal}) but not dead-lettered") from None
    assert message.kind == "checkin", f"{message} was applied"


@REAL_REDIS_ONLY  # one Redis is enough: the rules are the mirror's, not the server's
def test_no_stream_of_entries_stops_the_mirror_or_loses_a_valid_one(
    lab_stack: Stack,  # noqa: F811
    capsys: pytest.CaptureFixture[str],
) -> None:
    fuzz = Fuzz(lab_stack)

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(data=st.data())
    def example(data: st.DataObject) -> None:
        _run_example(fuzz, data)

    example()
    total = fuzz.valid + fuzz.malformed
    with capsys.disabled():
        print(
            f"\nstate stream fuzz ({lab_stack.settings.database_url.split(':')[0]}): "
            f"{fuzz.examples} examples, {total} entries: {fuzz.valid} valid reports all applied, "
            f"{fuzz.malformed} malformed ({fuzz.dead} dead-lettered, {fuzz.ignored} harmless "
            "check-ins); the mirror never raised"
        )
    assert total >= 2000
    assert fuzz.dead + fuzz.ignored == fuzz.malformed


MAX_MS = 2**64 - 1
YEAR_MS = 365 * 24 * 3600 * 1000


#: How far ahead of Redis's clock a Redis writer puts an id: a little, a lot, or all the way.
ahead_offsets = (
    st.integers(FUTURE_BOUND_MS + 1_000, YEAR_MS) | st.integers(YEAR_MS, MAX_MS) | st.just(MAX_MS)
)


def _forged_id(client: redis.Redis, offset: int, sequence: int) -> str:
    seconds, micros = client.time()
    return f"{min(MAX_MS, int(seconds) * 1000 + int(micros) // 1000 + offset)}-{sequence}"


def _append(fuzz: Fuzz, fields: dict[str, str]) -> None:
    """A worker's report: it waits while the stream is exhausted, as ``Claims`` does."""
    for _ in range(20):
        try:
            fuzz.stack.redis.xadd(keys.STATE_STREAM, fields)  # type: ignore[arg-type]
            return
        except redis.ResponseError as error:
            if "exhausted" not in str(error):
                raise
        fuzz.mirror.step()  # the mirror's next reading repairs it
    raise AssertionError("the stream stayed exhausted")


@REAL_REDIS_ONLY
def test_forged_ids_never_stamp_a_transition_ahead_nor_stop_reports(
    lab_stack: Stack,  # noqa: F811
    capsys: pytest.CaptureFixture[str],
) -> None:
    fuzz = Fuzz(lab_stack)
    client = lab_stack.redis
    forged = {"count": 0}

    @settings(
        max_examples=EXAMPLES // 2,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(data=st.data())
    def example(data: st.DataObject) -> None:
        jobs = lab_stack.producer.submit_many(lab.SQUARE, [{"x": n} for n in range(2)])
        reports = [
            StateMessage("status", fuzz.service, job, status, results=results, worker="w:1")
            for job in jobs
            for status, results in (("WORKING", None), ("COMPLETED", {"square": 0}))
        ]
        jobs_done = {job: n for n, job in enumerate(jobs)}
        for report in reports:
            if data.draw(st.booleans()):
                offset = data.draw(ahead_offsets)
                entry_id = _forged_id(client, offset, data.draw(st.integers(0, MAX_MS)))
                with contextlib.suppress(redis.ResponseError):  # not after the last id: refused
                    client.xadd(keys.STATE_STREAM, {"m": "{}"}, id=entry_id)
                    forged["count"] += 1
            if report.status == "COMPLETED":
                report = StateMessage(
                    "status",
                    fuzz.service,
                    report.job_id,
                    "COMPLETED",
                    results={"square": jobs_done[report.job_id] ** 2},
                    worker="w:1",
                )
            _append(fuzz, lab_stack.report_fields(report))
        while client.xlen(keys.STATE_STREAM):
            fuzz.mirror.step()
        fuzz.valid += len(reports)
        with open_session(lab_stack.settings.database_url) as session:
            latest = database_now(session) + timedelta(milliseconds=FUTURE_BOUND_MS)
        for job in jobs:
            row = lab_stack.job(job)
            assert row["status"] == "COMPLETED"
            for stamp in ("date_started", "date_finished"):
                assert datetime.fromisoformat(row[stamp]) <= latest, (stamp, row[stamp])
        entry = client.xadd(keys.STATE_STREAM, {"m": "{}"})
        seconds, _micros = client.time()
        assert int(entry.split(b"-")[0]) <= (int(seconds) + 1) * 1000 + FUTURE_BOUND_MS

    example()
    with capsys.disabled():
        print(
            f"\nforged ids: {forged['count']} entries with ids ahead of Redis's clock among "
            f"{fuzz.valid} valid reports, all applied and none stamped ahead"
        )
