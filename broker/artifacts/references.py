"""An artifact as a job's results name it: a small typed reference in place of the value.

The reference is plain JSON, so SQL, the state mirror, the HTTP API and
TopChef's own clients see a valid result whatever the artifact holds; and a
contract checks it like any value (``artifact_schema``). Its ``$artifact``
member is the content's SHA-256: whoever reads the bytes can check them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeGuard

#: The member that makes a JSON object a reference: its value is the digest.
MARK = "$artifact"
#: How a digest is spelt: the algorithm, then the hex of the content's hash.
DIGEST = re.compile(r"sha256:[0-9a-f]{64}")

#: Media types of what the worker writes itself.
NPY = "application/x-npy"
JSON = "application/json"
OCTET_STREAM = "application/octet-stream"


@dataclass(frozen=True, slots=True)
class Reference:
    """One artifact: its digest, size in bytes, media type and name; an array's dtype and shape."""

    digest: str
    size: int
    media_type: str
    name: str
    dtype: str | None = None
    shape: tuple[int, ...] | None = None

    def to_json(self) -> dict[str, Any]:
        value: dict[str, Any] = {
            MARK: self.digest,
            "size": self.size,
            "media_type": self.media_type,
            "name": self.name,
        }
        if self.dtype is not None:
            value["dtype"] = self.dtype
        if self.shape is not None:
            value["shape"] = list(self.shape)
        return value

    def describe(self) -> str:
        """One line for people: ``float64[1000000], 7.6 MiB, sha256:1f2e3d4c… (counts.npy)``."""
        what = self.media_type
        if self.dtype is not None and self.shape is not None:
            what = f"{self.dtype}[{','.join(map(str, self.shape))}]"
        return f"{what}, {_size(self.size)}, {self.digest[:15]}… ({self.name})"

    @classmethod
    def from_json(cls, value: object) -> Reference | None:
        """The reference ``value`` is, or None if it is none (any other JSON value)."""
        if not isinstance(value, Mapping) or MARK not in value:
            return None
        digest, size = value.get(MARK), value.get("size")
        media_type, name = value.get("media_type"), value.get("name")
        dtype, shape = value.get("dtype"), value.get("shape")
        if not (
            isinstance(digest, str)
            and DIGEST.fullmatch(digest)
            and _count(size)
            and isinstance(media_type, str)
            and isinstance(name, str)
            and (dtype is None or isinstance(dtype, str))
            and (shape is None or (isinstance(shape, list) and all(map(_count, shape))))
        ):
            return None
        return cls(digest, size, media_type, name, dtype, None if shape is None else tuple(shape))


def described(value: Any) -> Any:
    """``value`` with each reference in it replaced by its ``describe`` line."""
    reference = Reference.from_json(value)
    if reference is not None:
        return reference.describe()
    if isinstance(value, dict):
        return {key: described(member) for key, member in value.items()}
    if isinstance(value, list):
        return [described(item) for item in value]
    return value


def _size(size: int) -> str:
    if size < 1024:
        return f"{size} bytes"
    value = size / 1024
    for unit in ("KiB", "MiB", "GiB"):
        if value < 1024:
            return f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"


def _count(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def artifact_schema(
    media_type: str | None = None, dtype: str | None = None, ndim: int | None = None
) -> dict[str, Any]:
    """The JSON Schema of a reference: for a contract's field that holds an artifact.

    ``media_type`` fixes what it holds (``application/x-npy`` for an array);
    ``dtype`` and ``ndim`` fix an array's element type (NumPy's name, e.g.
    ``float64``) and number of dimensions. Plain JSON Schema: every validator
    of the contract checks it, the worker's, the mirror's and the gateway's.
    """
    properties: dict[str, Any] = {
        MARK: {"type": "string", "pattern": f"^{DIGEST.pattern}$"},
        "size": {"type": "integer", "minimum": 0},
        "media_type": {"type": "string"} if media_type is None else {"const": media_type},
        "name": {"type": "string"},
        "dtype": {"type": "string"} if dtype is None else {"const": dtype},
        "shape": {"type": "array", "items": {"type": "integer", "minimum": 0}},
    }
    if ndim is not None:
        properties["shape"] |= {"minItems": ndim, "maxItems": ndim}
    required = [MARK, "size", "media_type", "name"]
    if dtype is not None or ndim is not None:
        required += ["dtype", "shape"]
    return {
        "type": "object",
        "required": required,
        "properties": properties,
        "additionalProperties": False,
    }
