"""Who did something, as the record names them.

A job's history and provenance say who submitted, held, aborted or ran it.
Every process names itself here, one way, so that the same person or machine
reads the same in every record: ``user@host:pid`` for a person's process (a
producer, the CLI), ``host:pid`` for a worker, and fixed names for the
broker's own processes.
"""

from __future__ import annotations

import getpass
import os
import socket

#: Beat's decisions (a lost worker, a re-queue, a job whose time came) are its own.
BEAT = "beat"
#: The state mirror, when it records something no one else decided.
MIRROR = "mirror"


def person() -> str:
    """This process as a person's: ``user@host:pid`` (a producer, the CLI)."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no login name (a container's bare uid)
        user = str(os.getuid())
    return f"{user}@{socket.gethostname()}:{os.getpid()}"


def machine() -> str:
    """This process as a worker: ``host:pid``, what a job's ``worker`` field holds."""
    return f"{socket.gethostname()}:{os.getpid()}"
