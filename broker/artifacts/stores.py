"""Where artifacts are kept: a directory (this PC's, or a facility's shared mount).

Content-addressed: an artifact's key is the SHA-256 of its bytes, so writing
the same bytes twice keeps one copy (the second write replaces the first, so
that a damaged copy is repaired), and whoever reads them can check them.
A write is durable before it is named: the bytes go to a temporary file in
the store, are flushed to disk (``fsync``), then renamed to their digest and
the directory flushed in turn. A reference is reported only after that, so a
job's results never name an artifact a crash could lose; a worker killed in
between leaves a temporary file, never a half-written artifact under a name.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any
from urllib.parse import unquote, urlsplit

from broker.artifacts.references import DIGEST
from broker.errors import ConfigurationError, TopChefError

#: Bytes copied at a time from a file being stored.
CHUNK = 1 << 20
#: Where a store keeps its artifacts, and the files still being written.
OBJECTS, SPOOL = "sha256", "spool"


class ArtifactError(TopChefError):
    """An artifact is missing, or its bytes are not those its digest names."""

    title = "Artifact error"


class HashingWriter:
    """A binary file that hashes what is written to it, for a store's ``writing``."""

    def __init__(self, file: IO[bytes]) -> None:
        self._file = file
        self._hash = hashlib.sha256()
        self.size = 0

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        self._hash.update(view)
        self.size += len(view)
        return self._file.write(view)

    def flush(self) -> None:
        self._file.flush()

    @property
    def digest(self) -> str:
        return f"sha256:{self._hash.hexdigest()}"


class DirectoryStore:
    """Artifacts as files under one directory: ``sha256/<2 hex>/<64 hex>``."""

    def __init__(self, root: Path) -> None:
        self.root = root

    @property
    def url(self) -> str:
        return self.root.resolve().as_uri()

    def path(self, digest: str) -> Path:
        """Where the artifact ``digest`` is (or would be) kept."""
        hex_digest = _hex(digest)
        return self.root / OBJECTS / hex_digest[:2] / hex_digest

    @contextlib.contextmanager
    def writing(self) -> Iterator[HashingWriter]:
        """A file to write an artifact into; stored under its digest when the block ends.

        Read ``digest`` and ``size`` of the writer after the block. An exception
        inside it stores nothing.
        """
        spool = self.root / SPOOL
        spool.mkdir(parents=True, exist_ok=True)
        handle, name = tempfile.mkstemp(dir=spool, prefix=f"{uuid.uuid4().hex}-")
        temporary = Path(name)
        try:
            with os.fdopen(handle, "wb") as file:
                writer = HashingWriter(file)
                yield writer
                file.flush()
                os.fsync(file.fileno())
            self._name(temporary, writer.digest)
        finally:
            temporary.unlink(missing_ok=True)

    def put_bytes(self, data: bytes) -> tuple[str, int]:
        """Store ``data``; its digest and size."""
        with self.writing() as writer:
            writer.write(data)
        return writer.digest, writer.size

    def put_file(self, source: Path) -> tuple[str, int]:
        """Store a copy of the file ``source``; its digest and size."""
        with source.open("rb") as file, self.writing() as writer:
            while chunk := file.read(CHUNK):
                writer.write(chunk)
        return writer.digest, writer.size

    def open(self, digest: str) -> IO[bytes]:
        """The artifact's bytes, to read; ``ArtifactError`` if the store has none."""
        try:
            return self.path(digest).open("rb")
        except FileNotFoundError:
            raise ArtifactError(f"no artifact {digest} in {self.url}") from None

    def verify(self, digest: str) -> None:
        """Raise ``ArtifactError`` unless the kept bytes hash to ``digest``."""
        found = hashlib.sha256()
        with self.open(digest) as file:
            while chunk := file.read(CHUNK):
                found.update(chunk)
        if f"sha256:{found.hexdigest()}" != digest:
            raise ArtifactError(f"artifact {digest} is corrupt: its bytes hash otherwise")

    def _name(self, temporary: Path, digest: str) -> None:
        """Give the written file its digest's name, atomically.

        A file kept under that name already is replaced, not trusted: its
        bytes are the same unless something damaged them, and then this
        repairs it (a reader holding the old file keeps reading it whole).
        """
        target = self.path(digest)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(temporary, target)
        _fsync_directory(target.parent)


def store_for(url: str) -> DirectoryStore:
    """The store a URL names: a directory path or a ``file://`` URL."""
    parts = urlsplit(url)
    if parts.scheme in ("", "file"):
        path = unquote(parts.path) if parts.scheme else url
        if not path:
            raise ConfigurationError("the artifacts URL names no directory")
        return DirectoryStore(Path(path).expanduser())
    raise ConfigurationError(
        f"artifacts URL {url!r}: only a directory (a path or file://) is a store for now"
    )


def _hex(digest: str) -> str:
    if not DIGEST.fullmatch(digest):
        raise ArtifactError(f"{digest[:80]!r} is not an artifact's digest (sha256:<64 hex>)")
    return digest.removeprefix("sha256:")


def _fsync_directory(directory: Path) -> None:
    """Flush a directory's entries: a rename is durable only once its directory is."""
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def copy_out(store: DirectoryStore, digest: str, target: Path) -> int:
    """Write the artifact's bytes to ``target``; their size."""
    with store.open(digest) as source, target.open("wb") as out:
        shutil.copyfileobj(source, out, CHUNK)
        return out.tell()
