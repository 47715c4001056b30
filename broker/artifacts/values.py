"""A handler's results made storable, and read back: arrays, bytes, files, large JSON.

The worker ``offload``s what its handler returned before the contract sees
it: an array larger than ``INLINE_BYTES`` is written as ``.npy`` (the format
every NumPy user opens), bytes as themselves, a file it wrote (a path) as a
copy of it, and a JSON member too large to keep inline as a JSON artifact.
Each becomes a ``Reference`` in place. Small values stay inline as before,
so a job whose results were small is recorded exactly as it was.

A producer ``resolve``s references back: arrays as NumPy arrays mapped from
the store's file (nothing is read until it is used), JSON as its value, and
anything else as the path of its file. Bytes are checked against their
digest as they are read.

NumPy is never imported here unless a value is an array (a handler that
returns one has it), or a reference to one is read.
"""

from __future__ import annotations

import json
import mimetypes
import os
from pathlib import Path
from typing import Any

from broker.artifacts.references import JSON, MARK, NPY, OCTET_STREAM, Reference
from broker.artifacts.stores import ArtifactError, DirectoryStore

#: A value whose bytes (an array's, or a member's JSON) exceed this is an artifact.
INLINE_BYTES = 64 * 1024
#: Results kept inline are at most this much JSON; the largest members move out first.
INLINE_RESULTS_BYTES = 256 * 1024


def offload(results: Any, store: DirectoryStore | None, kept: dict[int, Any] | None = None) -> Any:
    """``results`` with every array, bytes, file and too-large member stored as an artifact.

    With no store configured, ``results`` comes back unchanged: the contract
    then says what it cannot record, as without artifacts. ``kept`` remembers
    the references of values stored already, by identity: a sweep whose every
    point passes one array stores (and hashes) it once.
    """
    if store is None:
        return results
    stored = _walk(results, store, "results", {} if kept is None else kept)
    if isinstance(stored, dict):
        stored = _inline_within_bound(stored, store)
    return stored


def _walk(value: Any, store: DirectoryStore, name: str, kept: dict[int, Any]) -> Any:
    if isinstance(value, dict):
        return {key: _walk(member, store, str(key), kept) for key, member in value.items()}
    if isinstance(value, list | tuple):
        return [_walk(item, store, f"{name}[{index}]", kept) for index, item in enumerate(value)]
    if id(value) in kept:
        return kept[id(value)][1]
    stored = _stored(value, store, name)
    if stored is not value:
        kept[id(value)] = (value, stored)  # the value held too: its id stays its own
    return stored


def _stored(value: Any, store: DirectoryStore, name: str) -> Any:
    """A reference to ``value`` stored, if it is an artifact's kind of value; else ``value``."""
    if isinstance(value, bytes | bytearray | memoryview):
        digest, size = store.put_bytes(bytes(value))
        return Reference(digest, size, OCTET_STREAM, name).to_json()
    if isinstance(value, os.PathLike):
        path = Path(value)
        digest, size = store.put_file(path)
        media_type = mimetypes.guess_type(path.name)[0] or OCTET_STREAM
        return Reference(digest, size, media_type, path.name).to_json()
    if _is_array(value) and value.nbytes > INLINE_BYTES and value.dtype.kind not in "OV":
        return _array(value, store, name)
    return value


def _is_array(value: object) -> bool:
    """A NumPy array, known without importing NumPy (a module that made one has it)."""
    kind = type(value)
    return kind.__module__ == "numpy" and kind.__name__ == "ndarray"


def _array(array: Any, store: DirectoryStore, name: str) -> dict[str, Any]:
    from numpy.lib import format as npy

    with store.writing() as writer:
        npy.write_array(writer, array, allow_pickle=False)
    shape = tuple(int(n) for n in array.shape)
    reference = Reference(writer.digest, writer.size, NPY, f"{name}.npy", str(array.dtype), shape)
    return reference.to_json()


def _inline_within_bound(results: dict[str, Any], store: DirectoryStore) -> dict[str, Any]:
    """Move the largest members to JSON artifacts until what stays inline is small enough."""
    sizes = {key: len(_json(member)) for key, member in results.items()}
    total = sum(sizes.values())
    if total <= INLINE_RESULTS_BYTES:
        return results
    kept = dict(results)
    for key in sorted(sizes, key=sizes.__getitem__, reverse=True):
        if total <= INLINE_RESULTS_BYTES or sizes[key] <= INLINE_BYTES:
            break
        if Reference.from_json(kept[key]) is not None:
            continue
        digest, size = store.put_bytes(_json(kept[key]).encode())
        kept[key] = Reference(digest, size, JSON, f"{key}.json").to_json()
        total -= sizes[key]
    return kept


def _json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), default=_plain)


def _plain(value: Any) -> Any:
    """A NumPy value as JSON, for sizing and storing a member (the contract checks it)."""
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not a JSON value")


def resolve(results: Any, store: DirectoryStore | None) -> Any:
    """``results`` with each reference replaced by what it names, checked against its digest.

    Walks only objects and arrays (a job's parameters are read on every run).
    A reference with no store to read it from is an ``ArtifactError``.
    """
    if isinstance(results, dict):
        if MARK in results and (reference := Reference.from_json(results)) is not None:
            if store is None:
                raise ArtifactError(
                    f"{reference.name} ({reference.digest}) is an artifact, and no artifact "
                    "store is configured here: set TOPCHEF_ARTIFACTS_URL"
                )
            return load(reference, store)
        return {
            key: resolve(member, store) if isinstance(member, dict | list) else member
            for key, member in results.items()
        }
    if isinstance(results, list):
        return [resolve(item, store) if isinstance(item, dict | list) else item for item in results]
    return results


def load(reference: Reference, store: DirectoryStore) -> Any:
    """The artifact's value: an array (mapped, not read), JSON, or its file's path."""
    store.verify(reference.digest)
    path = store.path(reference.digest)
    if reference.media_type == NPY:
        import numpy

        return numpy.load(path, mmap_mode="r", allow_pickle=False)
    if reference.media_type == JSON:
        with path.open("rb") as file:
            return json.load(file)
    return path
