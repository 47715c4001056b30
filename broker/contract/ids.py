"""The ids a user names jobs and services by: a ``uuid.UUID``, or its text.

``topchef jobs submit`` prints a job's id as text, and that text is what a user
pastes into a program, reads from a log or gets back over HTTP. Every call that
takes an id takes either, and this is the one place the text becomes a
``uuid.UUID``: text that is no id is ``NotUUIDError`` naming it, never a
database driver's complaint about a ``str`` that has no ``.hex``.
"""

from __future__ import annotations

import uuid

from broker.errors import NotUUIDError

#: What a caller may name a job or a service by.
Id = uuid.UUID | str


def as_uuid(value: object) -> uuid.UUID:
    """``value`` as a ``uuid.UUID``: itself, or the id its text spells (surrounding spaces
    ignored, as a line copied from a terminal has them); else ``NotUUIDError``."""
    if isinstance(value, uuid.UUID):
        return value
    if isinstance(value, str):
        try:
            return uuid.UUID(value.strip())
        except ValueError:
            pass
    raise NotUUIDError(value)
