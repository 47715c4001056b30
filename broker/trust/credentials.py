"""Workers' credentials: a name and a secret key, in one file a worker runs with.

A credential is a name and 32 random bytes, the key its worker authenticates
its reports with (``broker.trust.reports``). An operator enrolls it where the
database is (``broker.models.credentials``, ``topchef workers enroll NAME``):
the key is recorded in SQL, for the mirror, and written to one file, which goes
to the lab PC that runs the worker (``TOPCHEF_WORKER_KEY`` names it there) and
nowhere else: whoever reads it can report as that worker. The file holds the
name too, so that a worker cannot report under a name that is not its key's.
Nothing here touches the database: lab PCs never do.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from broker.errors import ConfigurationError, TopChefError
from broker.trust import reports
from broker.trust.reports import ReportKey

#: The core's own credential (the HTTP gateway's reports); no worker may take the name.
CORE = "core"
#: The credentials ``topchef up`` enrolls for the workers it starts are named this, and more.
STACK = "stack"
#: The first line of a credential file, so that a stray file is not taken for one.
_HEADER = "# TopChef worker credential: keep this file secret (mode 0600)"


class CredentialError(TopChefError):
    """A credential that cannot be enrolled, revoked or read as asked."""

    status_code = 400
    title = "Credential error"

    def __init__(self, name: str, detail: str) -> None:
        self.name = name
        super().__init__(detail)


@dataclass(frozen=True, slots=True)
class Credential:
    """A credential's name and secret key: what a worker authenticates its reports with."""

    name: str
    key: ReportKey

    def fields(self, report: str) -> dict[str, str]:
        """The stream entry of ``report`` (a state message's ``m`` field), authenticated."""
        report, by, signature = self.args(report)
        return {reports.REPORT: report, reports.BY: by, reports.SIGNATURE: signature}

    def args(self, report: str) -> list[str]:
        """``report``, its credential's name and its MAC: the ARGV a Lua script appends."""
        by, signature = reports.sign(self.name, self.key, report)
        return [report, by, signature]


def check_name(name: str) -> str:
    """``name`` if a credential may have it; else a ``CredentialError`` that says what may."""
    if reports.NAME.fullmatch(name) is None:
        raise CredentialError(
            name,
            f"{name!r} cannot name a credential: use 1 to 100 letters, digits and . _ @ -, "
            "starting with a letter or digit",
        )
    return name


def write(path: Path, credential: Credential) -> None:
    """Write ``credential`` to a new file at ``path``, readable by its owner only.

    Refuses to replace a file: a key overwritten is a worker that can no
    longer report.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise CredentialError(
            credential.name, f"{path} exists already: choose another --key-file"
        ) from None
    with os.fdopen(descriptor, "w", encoding="ascii") as handle:
        os.fchmod(handle.fileno(), 0o600)
        handle.write(f"{_HEADER}\nname {credential.name}\nkey {credential.key.text}\n")


def read(path: Path) -> Credential:
    """The credential in the file at ``path``; a ``ConfigurationError`` naming it otherwise."""
    try:
        lines = path.read_text(encoding="ascii").splitlines()
    except (OSError, UnicodeError) as error:
        raise ConfigurationError(f"cannot read the worker credential {path}: {error}") from None
    values = dict(line.split(" ", 1) for line in lines[1:] if " " in line)
    name, key = values.get("name", "").strip(), values.get("key", "").strip()
    if not lines or lines[0] != _HEADER or not name or not key:
        raise ConfigurationError(
            f"{path} is not a TopChef worker credential (`topchef workers enroll` writes one)"
        )
    if reports.NAME.fullmatch(name) is None:
        raise ConfigurationError(f"{path}: {name!r} is not a credential's name")
    try:
        return Credential(name, ReportKey(key))
    except ConfigurationError as error:
        raise ConfigurationError(f"{path}: {error.detail}") from None


def for_worker(key_file: str) -> Credential:
    """The credential a worker runs with; without one it does not start, and says how to get one."""
    if not key_file:
        raise ConfigurationError(
            "this worker has no credential: on the PC with the database run "
            "`topchef workers enroll NAME`, copy the file it writes here, and set "
            "TOPCHEF_WORKER_KEY to its path"
        )
    return read(Path(key_file))
