"""Results (and parameters) of real size: arrays, bytes and files kept as artifacts.

A job's results stay small JSON in SQL; a value too large for that, an array
or a file is written to an artifact store by the worker that produced it,
made durable, and named in the results by a small typed ``Reference``.
"""

from broker.artifacts.references import MARK, Reference, artifact_schema
from broker.artifacts.stores import DirectoryStore, store_for

__all__ = ["MARK", "DirectoryStore", "Reference", "artifact_schema", "store_for"]
