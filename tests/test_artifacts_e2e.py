"""Results of real size through a real stack: a worker process stores them, its
authenticated report names them, SQL records the reference, the producer reads arrays."""

from __future__ import annotations

import hashlib
import io
import subprocess

import lab_artifacts as la
import numpy as np
import pytest
from support import environment, topchef

from broker.artifacts import MARK, Reference

pytestmark = [pytest.mark.postgres, pytest.mark.slow]
pytest_plugins = ["gateway_support"]  # make_gateway

TOKEN = "artifacts-token"


@pytest.fixture
def running(stack):
    create = stack.producer.create_service
    create(la.SPECTROMETER, "a million points", la.POINTS, la.SPECTRUM_RESULTS)
    create(la.CAMERA, "a square frame", la.POINTS, la.FRAME_RESULTS)
    create(la.RECORDER, "writes a file", la.POINTS, la.ANY)
    create(la.ANALYZER, "sums an array it is passed", la.BACKGROUND, la.ANY)
    stack.start_mirror()
    stack.worker(module="lab_artifacts")
    stack.wait_available(la.SPECTROMETER)
    return stack


def test_a_million_point_spectrum_is_recorded_and_read_back_as_an_array(running):
    job = running.producer.submit(la.SPECTROMETER, {"points": 1_000_000})
    results = running.producer.wait(job, timeout=60)
    expected = np.sin(np.linspace(0.0, 20.0, 1_000_000)) ** 2
    np.testing.assert_array_equal(results["counts"], expected)
    assert results["peak"] == pytest.approx(1.0)
    recorded = running.job(job)["results"]["counts"]
    reference = Reference.from_json(recorded)
    assert reference is not None
    assert (reference.dtype, reference.shape) == ("float64", (1_000_000,))
    assert reference.size > 8_000_000
    assert running.producer.artifacts is not None
    running.producer.artifacts.verify(reference.digest)


def test_a_2048_square_camera_frame_keeps_its_type(running):
    job = running.producer.submit(la.CAMERA, {"points": 2048})
    frame = running.producer.wait(job, timeout=60)["frame"]
    assert (frame.dtype, frame.shape) == (np.uint16, (2048, 2048))
    assert int(frame[2047, 2047]) == (2048 * 2048 - 1) % 65521


def test_a_file_the_handler_wrote_is_kept_and_read_back_as_a_file(running):
    job = running.producer.submit(la.RECORDER, {"points": 3})
    results = running.producer.wait(job, timeout=60)
    assert results["log"].read_text() == "line 0\nline 1\nline 2\n"
    assert results["lines"] == 3
    assert running.job(job)["results"]["log"][MARK].startswith("sha256:")


def test_the_cli_summarises_an_artifact_and_fetches_it_checked(running, tmp_path):
    job = running.producer.submit(la.SPECTROMETER, {"points": 1_000_000})
    running.producer.wait(job, timeout=60)
    env = environment(running.settings)
    shown = subprocess.run(
        topchef("jobs", "show", str(job)), env=env, capture_output=True, text=True, check=True
    )
    (line,) = [line for line in shown.stdout.splitlines() if '"counts"' in line]
    assert "float64[1000000], 7.6 MiB, sha256:" in line
    digest = running.job(job)["results"]["counts"][MARK]
    target = tmp_path / "counts.npy"
    fetched = subprocess.run(
        topchef("artifacts", "get", digest, "-o", str(target)),
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert digest in fetched.stdout
    np.testing.assert_array_equal(np.load(target), np.sin(np.linspace(0.0, 20.0, 1_000_000)) ** 2)
    missing = subprocess.run(
        topchef("artifacts", "get", "sha256:" + "0" * 64, "-o", str(tmp_path / "x")),
        env=env,
        capture_output=True,
        text=True,
    )
    assert missing.returncode == 1
    assert missing.stderr.count("\n") == 1
    assert "no artifact" in missing.stderr


def test_http_serves_an_artifact_whole_or_a_range_behind_the_token(running, make_gateway):
    job = running.producer.submit(la.SPECTROMETER, {"points": 1_000_000})
    running.producer.wait(job, timeout=60)
    recorded = running.job(job)["results"]["counts"]
    digest = recorded[MARK]
    gateway = make_gateway(token=TOKEN)
    api = gateway.client()
    shown = api.get(f"/jobs/{job}").json()["data"]
    assert shown["results"]["counts"] == recorded  # clients see the reference, valid JSON
    whole = api.get(f"/artifacts/{digest}")
    assert whole.status_code == 200
    assert hashlib.sha256(whole.content).hexdigest() == digest.removeprefix("sha256:")
    assert whole.headers["ETag"].strip('"') == digest.removeprefix("sha256:")
    np.testing.assert_array_equal(
        np.load(io.BytesIO(whole.content)), np.sin(np.linspace(0.0, 20.0, 1_000_000)) ** 2
    )
    part = api.get(f"/artifacts/{digest}", headers={"Range": "bytes=128-135"})
    assert part.status_code == 206
    assert part.content == whole.content[128:136]
    unknown = api.get("/artifacts/sha256:" + "0" * 64)
    assert unknown.status_code == 404
    assert unknown.json()["errors"][0]["title"] == "Artifact not found"
    assert api.get("/artifacts/../../etc/passwd").status_code == 404
    assert gateway.client(token="").get(f"/artifacts/{digest}").status_code == 401


def test_an_array_passed_to_every_point_of_a_sweep_is_stored_once(running):
    background = np.linspace(0.0, 1.0, 100_000)
    points = [{"background": background, "scale": float(scale)} for scale in (1, 2, 3)]
    jobs = running.producer.submit_many(la.ANALYZER, points)
    totals = [results["total"] for results in running.producer.wait_all(jobs, timeout=60)]
    assert totals == pytest.approx([background.sum() * scale for scale in (1, 2, 3)])
    references = {running.job(job)["parameters"]["background"][MARK] for job in jobs}
    assert len(references) == 1  # one artifact, named by every job
    store = running.producer.artifacts
    assert store is not None
    assert [p.name for p in (store.root / "sha256").rglob("*") if p.is_file()] == [
        references.pop().removeprefix("sha256:")
    ]


def test_a_parameter_whose_bytes_were_changed_in_the_store_never_reaches_the_handler(running):
    background = np.ones(100_000)
    running.producer.hold_service(la.ANALYZER)
    job = running.producer.submit(la.ANALYZER, {"background": background, "scale": 1.0})
    digest = running.job(job)["parameters"]["background"][MARK]
    store = running.producer.artifacts
    assert store is not None
    path = store.path(digest)
    tampered = path.read_bytes().replace(np.ones(1).tobytes(), np.zeros(1).tobytes(), 1)
    path.write_bytes(tampered)  # what a PC with write access to a shared mount could do
    running.producer.resume_service(la.ANALYZER)
    ended = running.wait_status(job, "ERROR", timeout=60)
    assert "parameters could not be read" in ended["detail"]
    assert "corrupt" in ended["detail"]
