"""Signed reports, without a stack: what is signed, credential files, and fuzzing the checks.

The checks read what anyone with the Redis password may write, so they are
fuzzed: arbitrary fields never make them raise, and nothing that is not a
valid signature by an enrolled credential gets through.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from broker.errors import ConfigurationError
from broker.messaging import keys
from broker.messaging.messages import StateMessage
from broker.mirror import holders
from broker.mirror.entries import Reading
from broker.models import credentials as enrollment
from broker.models.service import Service
from broker.trust import credentials
from broker.trust.credentials import Credential
from broker.trust.reports import Signed, signed
from broker.trust.signing import SigningKey, encode

HEADER = "# TopChef worker credential: keep this file secret (mode 0600)"
CREDENTIAL = Credential("pc-1", SigningKey.generate())


def test_a_signature_is_over_the_report_and_the_name_in_topchefs_domain_only():
    key = CREDENTIAL.key.verify_key
    entry = CREDENTIAL.fields(
        StateMessage("checkin", uuid.uuid4(), available=True).to_fields()["m"]
    )
    claim = signed(entry)
    assert isinstance(claim, Signed)
    assert claim.verifies(key)
    bare = encode(CREDENTIAL.key.sign(entry["m"].encode()))
    for forged in (
        {**entry, "sig": bare},  # the bare report, signed outside TopChef's domain
        {**entry, "by": "pc-2"},  # another name
        {**entry, "m": entry["m"].replace("true", "false")},  # another report
    ):
        claim = signed(forged)
        assert isinstance(claim, Signed)
        assert not claim.verifies(key)


def test_credential_files_that_are_not_one_are_refused_in_one_line(tmp_path: Path):
    cases = {
        "empty": b"",
        "no header": b"name x\nkey abc\n",
        "bad key": f"{HEADER}\nname x\nkey abc\n".encode(),
        "bad name": f"{HEADER}\nname a b\nkey {SigningKey.generate().text}\n".encode(),
        "binary": b"\xff\xfe\x00",
    }
    for label, raw in cases.items():
        path = tmp_path / label
        path.write_bytes(raw)
        with pytest.raises(ConfigurationError) as caught:
            credentials.read(path)
        assert "\n" not in caught.value.detail, label
    with pytest.raises(ConfigurationError):
        credentials.read(tmp_path / "missing")
    written = tmp_path / "good.key"
    credentials.write(written, CREDENTIAL)
    assert credentials.read(written).key.verify_key == CREDENTIAL.key.verify_key
    with pytest.raises(credentials.CredentialError):
        credentials.write(written, CREDENTIAL)  # never replaces a key


_TEXT = st.one_of(st.text(max_size=120), st.binary(max_size=120))
_VALUE = st.one_of(_TEXT, st.integers(), st.none(), st.lists(st.integers(), max_size=3))


@settings(max_examples=2000, deadline=None)
@given(st.dictionaries(st.one_of(_TEXT, st.integers()), _VALUE, max_size=6))
def test_reading_a_signature_never_raises(fields):
    claim = signed(fields)
    assert isinstance(claim, str) or (
        isinstance(claim, Signed) and not claim.verifies(CREDENTIAL.key.verify_key)
    )


def _report(job: uuid.UUID, service: uuid.UUID, kind: str, status: str | None, attempt: object):
    data = {"kind": kind, "service_id": str(service), "job_id": str(job), "attempt": attempt}
    if status is not None:
        data["status"] = status
    if kind == "checkin":
        del data["job_id"]
    return json.dumps(data)


@st.composite
def _entries(draw, job: uuid.UUID, service: uuid.UUID, signers: list[Credential]):
    """State entries as a lab PC could write them: some genuine, most not."""
    kind = draw(st.sampled_from(["status", "progress", "release", "retry", "checkin"]))
    status = draw(st.sampled_from([None, "WORKING", "COMPLETED", "ERROR", "BOGUS"]))
    attempt = draw(st.one_of(st.integers(-3, 4), st.text(max_size=3), st.just([1])))
    target = draw(st.sampled_from([job, uuid.uuid4()]))
    report = draw(st.one_of(st.just(_report(target, service, kind, status, attempt)), _TEXT))
    signer = draw(st.sampled_from(signers))
    text = report if isinstance(report, str) else report.decode("latin-1")
    by, sig = signer.args(text)[1:]
    fields = {b"m": report if isinstance(report, bytes) else report.encode("utf-8", "replace")}
    fields[b"by"] = draw(st.one_of(st.just(by.encode()), st.binary(max_size=20)))
    fields[b"sig"] = draw(st.one_of(st.just(sig.encode()), st.binary(max_size=90)))
    if draw(st.booleans()):
        fields[b"take"] = draw(st.one_of(st.sampled_from([b"1", b"2"]), st.binary(max_size=12)))
    return fields


def test_screening_arbitrary_entries_never_raises_and_lets_through_only_a_holders(
    session, real_redis_url
):
    service = Service.new("Fuzzed", "", {"type": "object"}, {"type": "object"}, session)
    job = service.new_job({}).id
    session.flush()
    client = redis.Redis.from_url(real_redis_url)
    client.hset(keys.claim(job), keys.claim_taker(1), "pc-1")  # pc-1 took the job's claim
    enrolled, revoked = (
        Credential("pc-1", SigningKey.generate()),
        Credential("pc-2", SigningKey.generate()),
    )
    stranger = Credential("pc-3", SigningKey.generate())
    for credential in (enrolled, revoked):
        enrollment.enroll(session, credential.name, credential.key.verify_key)
    enrollment.revoke(session, revoked.name)
    session.flush()
    signers = [enrolled, revoked, stranger]
    generated = 0

    @settings(
        max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
    )
    @given(st.lists(_entries(job, service.id, signers), min_size=1, max_size=12))
    def screen(entries):
        nonlocal generated
        reading = Reading()
        for index, fields in enumerate(entries):
            reading.add(f"{index + 1}-0".encode(), fields)
        with session.begin_nested() as nested:
            holders.screen(session, reading, client)
            nested.rollback()
        generated += len(entries)
        refused = {dead.entry_id for dead in reading.refused}
        for report in [*reading.reports, *reading.check_ins.values()]:
            if report.entry_id in refused:
                continue
            if report.message.kind != "checkin" and report.message.job_id != job:
                continue  # no such job: the mirror refuses it for that (``Mirror._verify``)
            claim = signed(report.fields)
            assert isinstance(claim, Signed)
            assert claim.name == enrolled.name
            assert claim.verifies(enrolled.key.verify_key)

    try:
        screen()
    finally:
        client.delete(keys.claim(job))
    assert generated >= 300
