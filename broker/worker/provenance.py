"""What this worker process is, for the provenance of the jobs it runs.

Read once per process and handler module, never in a job's path: the code
version is the git commit of the handler's source when it runs from a git
checkout (``git rev-parse HEAD``, once), else the version of the installed
distribution that ships the module, else unknown.
"""

from __future__ import annotations

import functools
import importlib.metadata
import logging
import platform
import subprocess
import sys
from pathlib import Path

from broker import actors
from broker.messaging.provenance import RunProvenance

log = logging.getLogger(__name__)

#: How long ``git rev-parse`` may take at a worker's start before the version is unknown.
GIT_TIMEOUT = 5.0


def python_version() -> str:
    return f"{platform.python_implementation()} {platform.python_version()}"


def of_module(module: str) -> RunProvenance:
    """The provenance of a run of ``module``'s handler by this process (its pid now)."""
    return RunProvenance(actors.machine(), module, code_version(module), python_version())


@functools.cache
def code_version(module: str) -> str | None:
    """The git commit of ``module``'s checkout, or its distribution's version."""
    loaded = sys.modules.get(module)
    source = getattr(loaded, "__file__", None)
    if source:
        commit = _git_commit(Path(source).resolve().parent)
        if commit is not None:
            return commit
    return _distribution_version(module.partition(".")[0])


def _git_commit(directory: Path) -> str | None:
    if not any((parent / ".git").exists() for parent in (directory, *directory.parents)):
        return None
    try:
        done = subprocess.run(
            ["git", "-C", str(directory), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=GIT_TIMEOUT,
            check=False,
        )
    except (OSError, subprocess.SubprocessError) as error:
        log.warning("cannot read the git commit of %s: %s", directory, error)
        return None
    commit = done.stdout.strip()
    return commit if done.returncode == 0 and commit else None


def _distribution_version(package: str) -> str | None:
    names = importlib.metadata.packages_distributions().get(package, [])
    for name in names:
        try:
            return f"{name} {importlib.metadata.version(name)}"
        except importlib.metadata.PackageNotFoundError:
            continue
    return None
