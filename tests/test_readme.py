"""The README runs as written: every snippet, in order, against a fresh ``topchef up``.

A new user's first hour is this page. Its Python, ``sh`` and ``console``
blocks run here, top to bottom, in an empty directory where ``topchef up``
(a real subprocess, on its embedded Redis and SQLite) runs:

- a Python block is run with this interpreter in that directory, unless its
  first line names a file (``# my_lab.py``): then it is written to that file;
- ``sh`` blocks are run by bash line by line (``\\`` continues a line), a
  ``console`` block's ``$ `` lines too (a line indented by four spaces
  continues the command); one bash per block, so variables carry over;
- a command that runs until stopped (``topchef worker``, ``topchef api``… or
  one ending in ``&``) is started in the background, and stopped at the end;
  the output shown under it is waited for;
- a ``console`` block's output lines are checked against the command's
  output, and so is a Python value shown as printed (``print(x)  # {...}``):
  spaces are ignored and ``…`` stands for anything;
- ``timeout N cmd`` may end with 124 (the timeout, as the text says);
- port 8080 becomes a free port, so that the page runs beside anything else.

A block right after ``<!-- not run: reason -->`` is skipped (installing,
docker, ``topchef up`` itself, a second PC, the long benchmarks). A failure
names the README line of the command that failed.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from support import free_port, wait_for

pytestmark = pytest.mark.slow

README = Path(__file__).parent.parent / "README.md"
RUNNABLE = {"python", "sh", "console"}
#: Commands that run until stopped: started in the background.
LONG_RUNNING = re.compile(r"^(topchef|python -m broker) (up|worker|api|mirror|beat|flower)\b")
MARKER = "@@@"
#: ``print(...)  # {'message': 'hello'}``: a value the README says a Python block prints.
PRINTED = re.compile(r"^\s*print\(.*\)\s+#\s+([{\['\"\d].*)$")


@dataclass
class Command:
    line: int
    text: str
    shown: list[str] = field(default_factory=list)

    @property
    def background(self) -> bool:
        return self.text.endswith("&") or bool(LONG_RUNNING.match(self.text))


@dataclass
class Block:
    line: int
    language: str
    text: str
    skipped: str | None


def readme_blocks(text: str) -> list[Block]:
    """Every fenced block, with the line its first line of code is on."""
    blocks = []
    lines = text.splitlines()
    index = 0
    while index < len(lines):
        fence = re.match(r"^```(\S*)\s*$", lines[index])
        if not fence or not fence.group(1):
            index += 1
            continue
        before = next((line for line in reversed(lines[:index]) if line.strip()), "")
        skipped = re.match(r"^<!--\s*not run:\s*(.*?)\s*-->$", before.strip())
        end = next(i for i in range(index + 1, len(lines)) if lines[i].startswith("```"))
        blocks.append(
            Block(
                index + 2,
                fence.group(1),
                "\n".join(lines[index + 1 : end]),
                skipped.group(1) if skipped else None,
            )
        )
        index = end + 1
    return blocks


def commands(block: Block) -> list[Command]:
    """A shell block's commands, each with the output lines the README shows under it."""
    found: list[Command] = []
    continued = False
    for offset, line in enumerate(block.text.splitlines()):
        number = block.line + offset
        if block.language == "console":
            if line.startswith("$ "):
                found.append(Command(number, line[2:]))
            elif found and (line.startswith("    ") or continued):
                found[-1].text += "\n" + line
            elif found and line.strip():
                found[-1].shown.append(line)
        elif continued:
            found[-1].text += "\n" + line
        elif line.strip() and not line.lstrip().startswith("#"):
            found.append(Command(number, line))
        continued = line.endswith("\\")
    return found


def _shown_matches(shown: str, output: list[str]) -> bool:
    squeeze = re.compile(r"\s+")
    pattern = ".*".join(re.escape(part) for part in squeeze.sub("", shown).split("…"))
    return any(re.fullmatch(pattern, squeeze.sub("", line)) for line in output)


def _script(cmds: list[Command], directory: Path) -> str:
    """One bash script for a block: a marker before each command, a verdict after it."""
    lines = ["set -o pipefail"]
    for number, command in enumerate(cmds):
        lines.append(f"printf '\\n{MARKER}%s\\n' {number}")
        if command.background:
            text = command.text.rstrip("&").strip()
            log = directory / f".readme-background-{number}.log"
            quoted = shlex.quote(text)
            lines.append(f"setsid bash -c {quoted} > {log} 2>&1 < /dev/null &")
            lines.append(f"echo $! >> {directory / '.readme-background.pids'}")
            for shown in command.shown:
                literal = shlex.quote(shown.split("…")[0].strip())
                lines.append(
                    "deadline=$((SECONDS + 120)); "
                    f"until grep -qF -- {literal} {log}; do "
                    f"if ((SECONDS > deadline)); then printf '\\n{MARKER}FAIL %s %s\\n' {number} "
                    "'no such output'; cat " + str(log) + "; exit 1; fi; sleep 0.1; done"
                )
            continue
        allowed = "0|124" if command.text.startswith("timeout ") else "0"
        lines.append(command.text)
        lines.append(
            f'rc=$?; case $rc in {allowed}) ;; *) printf "\\n{MARKER}FAIL %s %s\\n" '
            f"{number} $rc; exit 1;; esac"
        )
    return "\n".join(lines) + "\n"


class Page:
    """The README's blocks run one by one in ``directory``, with ``env``."""

    def __init__(self, directory: Path, env: dict[str, str], port: int) -> None:
        self.directory = directory
        self.env = env
        self.port = port
        self.ran = 0

    def run(self, block: Block) -> None:
        text = block.text.replace("8080", str(self.port))
        if block.language == "python":
            self._python(Block(block.line, block.language, text, None))
        else:
            self._shell(Block(block.line, block.language, text, None))
        self.ran += 1

    def _python(self, block: Block) -> None:
        named = re.match(r"^# (\w+\.py)\s*$", block.text.splitlines()[0])
        if named:
            (self.directory / named.group(1)).write_text(block.text + "\n")
            return
        result = subprocess.run(
            [sys.executable, "-c", block.text],
            cwd=self.directory,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        if result.returncode != 0:
            pytest.fail(
                f"README line {block.line}: the Python block failed "
                f"({result.returncode}):\n{result.stdout}{result.stderr}",
                pytrace=False,
            )
        printed = result.stdout.splitlines()
        for offset, line in enumerate(block.text.splitlines()):
            shown = PRINTED.match(line)
            if shown and not _shown_matches(shown.group(1), printed):
                pytest.fail(
                    f"README line {block.line + offset}: printed no {shown.group(1)!r}, but:\n"
                    + result.stdout,
                    pytrace=False,
                )

    def _shell(self, block: Block) -> None:
        cmds = commands(block)
        result = subprocess.run(
            ["bash", "-c", _script(cmds, self.directory)],
            cwd=self.directory,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=300,
        )
        outputs: dict[int, list[str]] = {}
        current: list[str] = []
        for line in result.stdout.splitlines():
            if line.startswith(MARKER + "FAIL"):
                _, number, status = line.split(" ", 2)
                command = cmds[int(number)]
                pytest.fail(
                    f"README line {command.line}: `{command.text}` failed ({status}):\n"
                    + "\n".join(current),
                    pytrace=False,
                )
            if line.startswith(MARKER):
                current = outputs.setdefault(int(line.removeprefix(MARKER)), [])
            else:
                current.append(line)
        if result.returncode != 0:
            pytest.fail(f"README line {block.line}: bash failed:\n{result.stdout}", pytrace=False)
        for number, command in enumerate(cmds):
            if command.background:
                continue
            for shown in command.shown:
                if not _shown_matches(shown, outputs.get(number, [])):
                    pytest.fail(
                        f"README line {command.line}: `{command.text}` did not print\n"
                        f"  {shown}\nbut:\n" + "\n".join(outputs.get(number, [])),
                        pytrace=False,
                    )


def _running_in(directory: Path) -> set[int]:
    """Processes whose working directory is ``directory`` (what the page started)."""
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if Path(os.readlink(entry / "cwd")) == directory:
                    found.add(int(entry.name))
            except OSError:
                continue
    return found


def _descendants(root: int) -> set[int]:
    """Every live process under ``root`` (``/proc``'s parent links)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            state, parent = stat.rsplit(")", 1)[1].split()[:2]
            if state != "Z":
                parents[int(entry.name)] = int(parent)
    found: set[int] = set()
    frontier = {root}
    while frontier:
        frontier = {pid for pid, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def _alive(pids: set[int]) -> set[int]:
    alive = set()
    for pid in pids:
        try:
            state = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z":
            alive.add(pid)
    return alive


def _stop_background(directory: Path) -> None:
    pids = directory / ".readme-background.pids"
    if not pids.exists():
        return
    for pid in (int(line) for line in pids.read_text().split()):
        try:
            os.killpg(pid, signal.SIGTERM)  # each runs in a session (and group) of its own
        except ProcessLookupError:
            continue


def _services_available(database: Path) -> bool:
    import sqlite3

    if not database.exists():
        return False
    with sqlite3.connect(database) as connection:
        try:
            rows = connection.execute("SELECT name, is_service_available FROM services").fetchall()
        except sqlite3.OperationalError:  # the schema is still being made
            return False
    return {name for name, available in rows if available} >= {"Echo", "Rabi oscillation"}


def test_the_blocks_are_found_and_only_a_few_are_not_run():
    blocks = [b for b in readme_blocks(README.read_text()) if b.language in RUNNABLE]
    skipped = [b for b in blocks if b.skipped]
    assert len(blocks) >= 10
    assert all(b.skipped.strip() for b in skipped)
    assert len(skipped) <= 6, [f"line {b.line}: {b.skipped}" for b in skipped]
    console = next(b for b in blocks if b.language == "console" and "topchef api" in b.text)
    first, *rest = commands(console)
    assert first.background
    assert first.shown
    assert any("\n" in command.text for command in rest)  # continuation lines joined


@pytest.mark.timeout(900)
def test_the_readme_runs_as_written_against_topchef_up(tmp_path):
    directory = tmp_path.resolve()
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOPCHEF_")}
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env["PYTHONPATH"] = str(directory)
    up_log = (directory / "up.log").open("wb")
    up = subprocess.Popen(
        [sys.executable, "-m", "broker", "up"],
        cwd=directory,
        env=env,
        stdout=up_log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    page = Page(directory, env, free_port())
    try:
        wait_for(
            lambda: up.poll() is not None or _services_available(directory / "topchef.sqlite3"),
            120,
            "`topchef up` to serve its example services",
        )
        assert up.poll() is None, (directory / "up.log").read_text()
        for block in readme_blocks(README.read_text()):
            if block.language in RUNNABLE and not block.skipped:
                page.run(block)
        assert page.ran >= 9
    finally:
        started = _descendants(up.pid) | _running_in(directory)
        _stop_background(directory)
        if up.poll() is None:
            os.killpg(up.pid, signal.SIGINT)  # Ctrl-C, as the README says to stop it
        try:
            up.wait(120)
        except subprocess.TimeoutExpired:
            os.killpg(up.pid, signal.SIGKILL)
            up.wait(10)
        up_log.close()
    assert up.returncode == 0, (directory / "up.log").read_text()
    wait_for(
        lambda: not _alive(started) and not _running_in(directory),
        60,
        "every process `topchef up` and the page started to end",
    )
    assert len(started) > 1  # `topchef up` and what it started: Redis, mirror, beat, workers
