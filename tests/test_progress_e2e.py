"""What a person sees of a job while it runs, through a real worker, the mirror and SQL.

A handler reports ``progress(0.4, "point 81/200")`` and holds there until the
test releases it. ``topchef jobs wait`` and ``jobs submit --wait`` run as real
processes, on a pseudo-terminal (a live bar on stderr, then the results) and
on pipes (exactly the output a script read before the bar existed).
"""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import struct
import subprocess
import sys
import termios
import threading
import uuid

import lab_progress as lp
import pytest
from support import environment, wait_for

from broker.settings import Settings

pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.redis]

COLUMNS = 120
#: What the bar writes to redraw its line in place.
ERASE = "\x1b[K"


class Terminal:
    """A ``topchef`` command on a pseudo-terminal of ``COLUMNS`` columns, as a person runs it."""

    def __init__(self, args: list[str], settings: Settings) -> None:
        master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, COLUMNS, 0, 0))
        self.popen = subprocess.Popen(
            [sys.executable, "-m", "broker", *args],
            env=environment(settings),
            stdin=slave,
            stdout=slave,
            stderr=slave,
            start_new_session=True,
        )
        os.close(slave)
        self._master = master
        self._chunks: list[bytes] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        while True:
            try:
                data = os.read(self._master, 65536)
            except OSError:  # EIO: the command ended, and its side of the terminal with it
                return
            if not data:
                return
            self._chunks.append(data)

    def output(self) -> str:
        return b"".join(self._chunks).decode(errors="replace")

    def finish(self, timeout: float = 60.0) -> int:
        try:
            code = self.popen.wait(timeout)
        finally:
            if self.popen.poll() is None:
                self.popen.kill()
            self._reader.join(10)
            os.close(self._master)
        return code

    def screen(self) -> list[str]:
        """The lines as the terminal shows them: each line's last redraw."""
        text = self.output().replace("\r\n", "\n").replace(ERASE, "")
        return [line.rsplit("\r", 1)[-1] for line in text.split("\n")]


def _run(args: list[str], settings: Settings) -> subprocess.Popen[str]:
    """The command on pipes, as a script runs it."""
    return subprocess.Popen(
        [sys.executable, "-m", "broker", *args],
        env=environment(settings),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.fixture
def steps(stack):
    """The Steps service, served by a real worker running three jobs at once."""
    stack.producer.create_service(lp.STEPS, "reports progress", lp.STEPS_SCHEMA, lp.POINTS_RESULTS)
    stack.start_mirror()
    stack.worker("--concurrency", "3", module="lab_progress")
    return stack


def _held(stack, points: int, **extra: str) -> tuple[uuid.UUID, str]:
    """A Steps job at 40 %, its progress in SQL, held until ``stack.release(tag)``."""
    tag = uuid.uuid4().hex
    job = stack.producer.submit(lp.STEPS, {"points": points, "tag": tag, **extra})
    wait_for(lambda: stack.job(job)["progress"] == 0.4, 60, "the job's progress to reach SQL")
    return job, tag


def test_jobs_wait_on_a_terminal_shows_a_live_bar_then_the_summarised_results(steps, cli):
    job, tag = _held(steps, 200)
    shown = steps.producer.job(job)
    assert (shown["progress"], shown["progress_message"]) == (0.4, "point 81/200")
    assert '"progress_message": "point 81/200",' in cli("jobs", "show", str(job))
    listed = next(line for line in cli("jobs", "list").splitlines() if str(job) in line)
    assert listed.endswith(" 40% point 81/200")

    terminal = Terminal(["jobs", "wait", str(job)[:8], "--timeout", "60"], steps.settings)
    wait_for(lambda: "point 81/200" in terminal.output(), 30, "the bar to show the progress")
    steps.release(tag)
    assert terminal.finish() == 0, terminal.output()
    screen = terminal.screen()
    bars = [line for line in terminal.output().replace(ERASE, "").split("\r") if "Waiting" in line]
    assert any(
        re.fullmatch(r"Waiting  \[#{8} {12}\]  40%  \d+:\d\d  point 81/200", bar) for bar in bars
    ), bars
    assert all(len(bar) < COLUMNS for bar in bars)
    done = next(line for line in screen if line.startswith("Waiting"))
    assert re.fullmatch(r"Waiting  \[#{20}\] 100%  \d+:\d\d  COMPLETED", done), done
    assert screen[screen.index(done) + 1 :] == [
        "{",
        '  "points": <200 numbers: ' + ", ".join(map(str, range(17))) + ", …>",
        "}",
        "(summarised to fit a screen: --results prints the results whole)",
        "",
    ]


def test_without_a_terminal_the_output_is_what_a_script_read_before(steps):
    job, tag = _held(steps, 5)
    waiting = _run(["jobs", "wait", str(job), "--timeout", "60"], steps.settings)
    big, big_tag = _held(steps, 200)
    whole = _run(["jobs", "wait", str(big), "--timeout", "60", "--results"], steps.settings)
    summarised = _run(["jobs", "wait", str(big), "--timeout", "60"], steps.settings)
    steps.release(tag)
    steps.release(big_tag)
    out, err = waiting.communicate(timeout=60)
    assert (waiting.returncode, err) == (0, "")
    assert out == json.dumps({"points": [0, 1, 2, 3, 4]}, indent=2) + "\n"
    out, err = whole.communicate(timeout=60)
    assert (whole.returncode, err) == (0, "")
    assert out == json.dumps({"points": list(range(200))}, indent=2) + "\n"
    out, err = summarised.communicate(timeout=60)
    assert summarised.returncode == 0
    assert out.splitlines()[1].startswith('  "points": <200 numbers: 0, 1, 2,')
    assert err == "(summarised to fit a screen: --results prints the results whole)\n"


def test_a_sweep_s_bar_counts_jobs_done_and_failures_so_far(steps):
    tag = uuid.uuid4().hex
    sweep = [{"fail": True}, {"points": 300}, {"points": 5, "tag": tag}]
    terminal = Terminal(
        ["jobs", "submit", lp.STEPS, json.dumps(sweep), "--wait", "60"], steps.settings
    )
    wait_for(
        lambda: "2/3 jobs done, 1 failed" in terminal.output(), 60, "the bar to count the sweep"
    )
    steps.release(tag)
    assert terminal.finish() == 1, terminal.output()  # one job failed
    screen = terminal.screen()
    ids = screen[:3]
    assert all(uuid.UUID(job) for job in ids)
    done = screen[3]
    assert re.fullmatch(r"Waiting  \[#{20}\] 100%  \d+:\d\d  3/3 jobs done, 1 failed", done), done
    assert screen[4].startswith(f"{ids[0]}  ERROR      ")
    assert "no sample in the holder" in screen[4]
    assert screen[5].startswith(f'{ids[1]}  COMPLETED  {{"points": <300 numbers: 0, 1, 2, ')
    assert screen[5].endswith(", …>}")
    assert len(screen[5]) <= 200
    assert screen[6:] == [
        f'{ids[2]}  COMPLETED  {{"points": [0, 1, 2, 3, 4]}}',
        "3 jobs: 2 completed, 1 failed, 0 cancelled, 0 not finished after 60 s",
        f"failed {ids[0]}: ValueError: no sample in the holder",
        "(summarised to fit a screen: --results prints the results whole)",
        "",
    ]


def test_a_message_with_new_lines_escapes_and_no_end_stays_on_the_bar_s_one_line(steps):
    note = "line one\nline two\t\x1b[31mred\x1b[0m " + "é" * 20 + "測" * 20 + "x" * 5000
    job, tag = _held(steps, 10, note=note)
    assert steps.producer.job(job)["progress_message"] == note  # stored as the handler said it
    terminal = Terminal(["jobs", "wait", str(job), "--timeout", "60"], steps.settings)
    wait_for(lambda: "line two" in terminal.output(), 30, "the bar to show the message")
    steps.release(tag)
    assert terminal.finish() == 0, terminal.output()
    drawn = terminal.output().replace(ERASE, "")
    assert "\x1b" not in drawn  # the handler's escape sequences never reach the terminal
    bar = next(line for line in drawn.split("\r") if "line two" in line)
    shown = r"line one line two \[31mred \[0m é{20}測+…"  # ESC and new lines: spaces
    assert re.fullmatch(r"Waiting  \[#{8} {12}\]  40%  \d+:\d\d  " + shown, bar), bar
    cells = len(bar) + bar.count("測")  # each of those takes two columns
    assert cells <= COLUMNS - 1
