"""Artifacts: what a handler returns of real size, stored by content and read back checked."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from broker.artifacts import MARK, DirectoryStore, Reference, artifact_schema, store_for
from broker.artifacts.stores import SPOOL, ArtifactError
from broker.artifacts.values import INLINE_BYTES, offload, resolve
from broker.contract import Contract
from broker.errors import ConfigurationError, DeserializationError


@pytest.fixture
def store(tmp_path) -> DirectoryStore:
    return DirectoryStore(tmp_path / "artifacts")


def _sha256(path: Path) -> str:
    return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_large_array_is_stored_as_npy_and_read_back_mapped_not_copied(store):
    counts = np.linspace(0.0, 1.0, 1_000_000)
    results = offload({"counts": counts, "peak": 0.5}, store)
    reference = Reference.from_json(results["counts"])
    assert reference is not None
    assert (reference.media_type, reference.dtype, reference.shape) == (
        "application/x-npy",
        "float64",
        (1_000_000,),
    )
    assert reference.name == "counts.npy"
    assert results["peak"] == 0.5
    kept = store.path(reference.digest)
    assert _sha256(kept) == reference.digest
    assert kept.stat().st_size == reference.size
    json.dumps(results)  # the results SQL records are plain JSON
    read = resolve(results, store)
    assert isinstance(read["counts"], np.memmap)
    np.testing.assert_array_equal(read["counts"], counts)


def test_a_camera_frame_keeps_its_dtype_and_shape(store):
    frame = np.arange(2048 * 2048, dtype=np.uint16).reshape(2048, 2048)
    reference = Reference.from_json(offload({"frame": frame}, store)["frame"])
    assert reference is not None
    assert (reference.dtype, reference.shape) == ("uint16", (2048, 2048))
    np.testing.assert_array_equal(resolve({"frame": reference.to_json()}, store)["frame"], frame)


def test_small_values_stay_inline_exactly_as_before(store):
    small = np.arange(10)
    results = {"x": small, "label": "ok", "points": list(range(100))}
    assert offload(results, store) is not None
    assert offload(results, store)["x"] is small  # the contract makes it JSON, as before
    assert not (store.root / "sha256").exists()


def test_bytes_and_files_are_stored_as_themselves(store, tmp_path):
    image = tmp_path / "frame.png"
    image.write_bytes(b"\x89PNG fake")
    results = offload({"raw": b"\x00\x01" * 10, "image": image}, store)
    raw, picture = Reference.from_json(results["raw"]), Reference.from_json(results["image"])
    assert raw is not None
    assert picture is not None
    assert (raw.media_type, raw.size) == ("application/octet-stream", 20)
    assert (picture.media_type, picture.name) == ("image/png", "frame.png")
    read = resolve(results, store)
    assert read["raw"].read_bytes() == b"\x00\x01" * 10
    assert read["image"].read_bytes() == b"\x89PNG fake"


def test_json_too_large_to_keep_inline_moves_out_largest_member_first(store):
    waveform = [float(i) for i in range(100_000)]
    results = offload({"waveform": waveform, "mean": 1.5}, store)
    reference = Reference.from_json(results["waveform"])
    assert reference is not None
    assert reference.media_type == "application/json"
    assert results["mean"] == 1.5
    assert resolve(results, store) == {"waveform": waveform, "mean": 1.5}


def test_the_same_bytes_are_kept_once(store):
    first, _ = store.put_bytes(b"spectrum" * 1000)
    second, _ = store.put_bytes(b"spectrum" * 1000)
    assert first == second
    assert len(list((store.root / "sha256").rglob("*"))) == 2  # one directory, one file


def test_bytes_that_do_not_match_their_digest_are_refused_when_read(store):
    results = offload({"counts": np.ones(INLINE_BYTES, dtype=np.float64)}, store)
    reference = Reference.from_json(results["counts"])
    assert reference is not None
    path = store.path(reference.digest)
    path.chmod(0o644)
    with path.open("r+b") as file:
        file.seek(-1, 2)
        file.write(b"\x00")
    with pytest.raises(ArtifactError, match="corrupt"):
        resolve(results, store)


def test_storing_the_same_bytes_again_repairs_a_damaged_copy(store):
    digest, _ = store.put_bytes(b"frame" * 100)
    store.path(digest).write_bytes(b"damaged")
    with pytest.raises(ArtifactError, match="corrupt"):
        store.verify(digest)
    assert store.put_bytes(b"frame" * 100)[0] == digest
    store.verify(digest)


def test_a_write_that_fails_stores_nothing_and_leaves_no_spool(store):
    def write_half() -> None:
        with store.writing() as writer:
            writer.write(b"half of it")
            raise RuntimeError("the handler's disk filled")

    with pytest.raises(RuntimeError):
        write_half()
    assert not (store.root / "sha256").exists()
    assert list((store.root / SPOOL).iterdir()) == []


def test_a_missing_artifact_says_which(store):
    digest = "sha256:" + "0" * 64
    with pytest.raises(ArtifactError, match="no artifact"):
        resolve({"x": Reference(digest, 1, "application/json", "x.json").to_json()}, store)


@given(
    st.dictionaries(
        st.sampled_from([MARK, "size", "media_type", "name", "dtype", "shape", "other"]),
        st.none() | st.integers(-3, 3) | st.text(max_size=70) | st.lists(st.integers(-1, 3)),
    )
)
def test_anything_that_is_not_a_reference_reads_as_none_never_an_error(value):
    reference = Reference.from_json(value)
    if reference is not None:
        assert Reference.from_json(reference.to_json()) == reference


def test_a_contract_can_say_a_field_is_an_array_of_a_dtype_and_dimensions(store):
    contract = Contract(
        {
            "type": "object",
            "required": ["frame"],
            "properties": {"frame": artifact_schema("application/x-npy", "uint16", ndim=2)},
        }
    )
    frame = offload({"frame": np.zeros((512, 512), dtype=np.uint16)}, store)
    assert contract.validate(frame) == frame
    wrong = offload({"frame": np.zeros((512, 512), dtype=np.float32)}, store)
    with pytest.raises(DeserializationError, match="uint16"):
        contract.validate(wrong)
    flat = offload({"frame": np.zeros(512 * 512, dtype=np.uint16)}, store)
    with pytest.raises(DeserializationError):
        contract.validate(flat)


def test_a_store_is_named_by_a_path_or_a_file_url(tmp_path):
    assert store_for(str(tmp_path)).root == tmp_path
    assert store_for(tmp_path.as_uri()).root == tmp_path
    with pytest.raises(ConfigurationError, match="directory"):
        store_for("s3://bucket/artifacts")
