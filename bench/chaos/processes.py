"""TopChef processes as a chaos run starts, kills, freezes and restarts them.

Each child is a ``python -m broker ...`` command in a process group of its
own, so that a signal reaches the whole of it (Celery's main process and any
pool processes) and nothing of it outlives the run. Children are also asked to
die with the harness (``PR_SET_PDEATHSIG``): that signal follows the *thread*
that forked, so children are only ever started from the main thread.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

from bench.servers import PYTHON, REPO, wait_until

_PR_SET_PDEATHSIG = 1

try:
    # Resolved here, not in the forked child, where loading a library could
    # deadlock on a lock another thread of the harness held at the fork.
    _prctl = ctypes.CDLL("libc.so.6", use_errno=True).prctl
except (OSError, AttributeError):
    _prctl = None


def die_with_parent() -> None:
    if _prctl is not None:
        _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


class Child:
    """One ``topchef`` command, logging to its own file."""

    def __init__(self, name: str, args: list[str], env: dict[str, str], log_dir: Path) -> None:
        if threading.current_thread() is not threading.main_thread():
            raise RuntimeError("children are started from the main thread (see module docstring)")
        self.name = name
        self.args = args
        self.log_path = log_dir / f"{name}.log"
        with self.log_path.open("ab") as log:
            self.popen = subprocess.Popen(
                [PYTHON, "-m", "broker", *args],
                env=env,
                cwd=REPO,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=die_with_parent,
            )
        self.started = time.monotonic()
        #: Set when the harness killed the child on purpose.
        self.killed_at: float | None = None
        #: Whether the harness asked it to stop (an exit then is no finding).
        self.stopped = False

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    @property
    def returncode(self) -> int | None:
        return self.popen.poll()

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def log_tail(self, lines: int = 20) -> str:
        return "\n".join(self.log().splitlines()[-lines:])

    def wait_for_log(self, text: str, timeout: float) -> None:
        """Until ``text`` is in the log; fail early if the child exits first."""

        def seen() -> bool:
            if text in self.log():
                return True
            if not self.alive():
                raise RuntimeError(
                    f"{self.name} exited ({self.returncode}) before logging {text!r}:\n"
                    + self.log_tail()
                )
            return False

        wait_until(seen, timeout, f"{self.name} to log {text!r}", 0.05)

    def signal(self, signum: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.popen.pid, signum)

    def kill(self) -> None:
        """SIGKILL the whole process group, as a power cut would."""
        self.killed_at = time.time()
        self.signal(signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(10)

    def freeze(self) -> None:
        self.signal(signal.SIGSTOP)

    def thaw(self) -> None:
        self.signal(signal.SIGCONT)

    def stop(self, timeout: float = 20.0) -> None:
        """A clean shutdown (SIGTERM: Celery finishes the jobs under way), then SIGKILL."""
        if self.alive():
            self.stopped = True
            self.thaw()  # a frozen process cannot handle SIGTERM
            self.signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.signal(signal.SIGKILL)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.popen.wait(10)
        self.signal(signal.SIGKILL)  # anything of its group left behind
