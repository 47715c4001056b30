"""Authenticated reports, without a stack: what a MAC covers, credential files, fuzzed checks.

The checks read what anyone with the Redis password may write, so they are
fuzzed: arbitrary fields never make them raise, and nothing that is not a
valid MAC by an enrolled credential gets through.
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
from broker.messaging.claims import Claims
from broker.messaging.messages import StateMessage
from broker.mirror import holders
from broker.mirror.entries import Reading
from broker.models import credentials as enrollment
from broker.models.service import Service
from broker.trust import credentials
from broker.trust.credentials import Credential
from broker.trust.reports import MAC_BYTES, ReportKey, Signed, signed
from broker.trust.signing import decode, encode

HEADER = "# TopChef worker credential: keep this file secret (mode 0600)"
CREDENTIAL = Credential("pc-1", ReportKey.generate())


def test_a_mac_is_over_the_report_and_the_name_in_topchefs_domain_only():
    key = CREDENTIAL.key
    entry = CREDENTIAL.fields(
        StateMessage("checkin", uuid.uuid4(), available=True).to_fields()["m"]
    )
    claim = signed(entry)
    assert isinstance(claim, Signed)
    assert claim.verifies(key)
    assert len(decode(entry["sig"])) == MAC_BYTES
    bare = encode(key.mac(entry["m"].encode()))
    other = ReportKey.generate()
    for forged in (
        {**entry, "sig": bare},  # the bare report, outside TopChef's domain
        {**entry, "by": "pc-2"},  # another credential's name over the same MAC
        {**entry, "m": entry["m"].replace("true", "false")},  # another report
        Credential("pc-1", other).fields(entry["m"]),  # the right name, a wrong secret
    ):
        claim = signed(forged)
        assert isinstance(claim, Signed)
        assert not claim.verifies(key)
    # pc-2's own MAC verifies only under pc-2's key, never pc-1's.
    theirs = signed(Credential("pc-2", other).fields(entry["m"]))
    assert isinstance(theirs, Signed)
    assert theirs.verifies(other)
    assert not theirs.verifies(key)


def test_a_truncated_or_garbled_mac_is_refused_unread_or_does_not_verify():
    entry = CREDENTIAL.fields(StateMessage("checkin", uuid.uuid4()).to_fields()["m"])
    raw = decode(entry["sig"])
    flipped = bytes([raw[0] ^ 1]) + raw[1:]
    for sig in (entry["sig"][:-1], entry["sig"][:20], encode(raw[:16]), encode(raw + b"x")):
        assert signed({**entry, "sig": sig}) == "forged: the MAC is not one", sig
    for sig in ("!" * 43, "é" * 10, "a" * 200):
        assert isinstance(signed({**entry, "sig": sig}), str), sig
    claim = signed({**entry, "sig": encode(flipped)})
    assert isinstance(claim, Signed)
    assert not claim.verifies(CREDENTIAL.key)
    assert signed({**entry, "sig": ""}) == "unsigned: no credential name or no MAC"


def test_a_report_key_is_32_bytes_and_never_shows_itself():
    key = ReportKey.generate()
    assert len(decode(key.text)) == 32
    assert key.text not in repr(key)
    assert key.fingerprint in repr(key)
    assert ReportKey(key.text) == key != ReportKey.generate()
    for text in ("", "abc", encode(b"x" * 31), encode(b"x" * 64), "not base64!"):
        with pytest.raises(ConfigurationError):
            ReportKey(text)


def test_credential_files_that_are_not_one_are_refused_in_one_line(tmp_path: Path):
    cases = {
        "empty": b"",
        "no header": b"name x\nkey abc\n",
        "bad key": f"{HEADER}\nname x\nkey abc\n".encode(),
        "bad name": f"{HEADER}\nname a b\nkey {ReportKey.generate().text}\n".encode(),
        "short key": f"{HEADER}\nname x\nkey {encode(b'k' * 16)}\n".encode(),
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
    assert credentials.read(written).key == CREDENTIAL.key
    with pytest.raises(credentials.CredentialError):
        credentials.write(written, CREDENTIAL)  # never replaces a key


_TEXT = st.one_of(st.text(max_size=120), st.binary(max_size=120))
_VALUE = st.one_of(_TEXT, st.integers(), st.none(), st.lists(st.integers(), max_size=3))


@settings(max_examples=2000, deadline=None)
@given(st.dictionaries(st.one_of(_TEXT, st.integers()), _VALUE, max_size=6))
def test_reading_a_mac_never_raises(fields):
    claim = signed(fields)
    assert isinstance(claim, str) or (
        isinstance(claim, Signed) and not claim.verifies(CREDENTIAL.key)
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
    garbled = st.builds(lambda n: sig[:n].encode(), st.integers(0, len(sig)))
    fields[b"sig"] = draw(st.one_of(st.just(sig.encode()), garbled, st.binary(max_size=90)))
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
        Credential("pc-1", ReportKey.generate()),
        Credential("pc-2", ReportKey.generate()),
    )
    stranger = Credential("pc-3", ReportKey.generate())
    for credential in (enrolled, revoked):
        enrollment.enroll(session, credential.name, credential.key)
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
            holders.screen(session, reading, Claims(client))
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
            assert claim.verifies(enrolled.key)

    try:
        screen()
    finally:
        client.delete(keys.claim(job))
    assert generated >= 300
