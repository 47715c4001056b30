"""A second PC: the embedded Redis at an address that outlives the stack's restarts.

``topchef up`` keeps its unix socket in the stack's directory and, with
``--listen``, its port and a generated password there too
(``broker.ops.network``), so that what a second PC was told stays true. The
whole story through real processes (restart ``up``, submit, the worker
started on its own runs it) is in ``test_cli_process.py``; here too, what
such a worker says while its broker is gone (``broker.worker.connection``).
"""

from __future__ import annotations

import ipaddress
import logging
import os
import signal
import socket
import stat
import subprocess
import tempfile
from pathlib import Path

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry
from support import free_port, keyed, wait_for

from broker.app import make_app
from broker.errors import ConfigurationError
from broker.ops.embedded import (
    MAX_SOCKET_PATH,
    SOCKET_FILE,
    EmbeddedRedis,
    process_runs,
    socket_path,
)
from broker.ops.network import (
    NETWORK_FILE,
    Listen,
    NetworkAccess,
    another_pc,
    listen_address,
    only_here,
    reachable_host,
)
from broker.settings import STATE_DIR, URL_FILE, Settings, announced_url, masked
from broker.trust.signing import read_private, read_public
from broker.worker.connection import REMIND_SECONDS, RETRY_SECONDS, Outage

HERE = "127.0.0.1"  # the only network this sandbox has; --listen 0.0.0.0 takes the same path


def _mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# -- the port and the password ------------------------------------------------------


def test_the_first_listen_chooses_a_port_and_a_password_kept_private(tmp_path):
    access = NetworkAccess.kept_in(tmp_path, Listen(HERE))
    assert _mode(tmp_path / NETWORK_FILE) == 0o600
    assert len(access.password) == 40
    int(access.password, 16)  # hex: goes into a URL and a shell as it is
    assert NetworkAccess.kept_in(tmp_path, Listen(HERE)) == access  # every next start
    assert NetworkAccess.load(tmp_path) == access
    assert NetworkAccess.kept_in(tmp_path / "another", Listen(HERE)).password != access.password


def test_a_port_given_replaces_the_kept_one_and_the_password_stays(tmp_path):
    first = NetworkAccess.kept_in(tmp_path, Listen(HERE))
    port = free_port()
    assert NetworkAccess.kept_in(tmp_path, Listen(HERE, port)) == NetworkAccess(
        port, first.password
    )
    assert NetworkAccess.kept_in(tmp_path, Listen(HERE)).port == port


def test_a_port_another_program_took_is_refused_in_words_and_nothing_is_kept(tmp_path):
    with socket.socket() as other:
        other.bind((HERE, 0))
        other.listen()
        port = other.getsockname()[1]
        with pytest.raises(ConfigurationError, match=rf"port {port} \(given with --port\)"):
            NetworkAccess.kept_in(tmp_path, Listen(HERE, port))
        assert not (tmp_path / NETWORK_FILE).exists()
        (tmp_path / NETWORK_FILE).write_text(f'{{"port": {port}, "password": "{"ab" * 20}"}}')
        with pytest.raises(ConfigurationError, match=rf"port {port} \(kept in {NETWORK_FILE}\)"):
            NetworkAccess.kept_in(tmp_path, Listen(HERE))


@pytest.mark.parametrize(
    "text",
    [
        "not JSON",
        "[]",
        '{"port": 6400}',
        '{"port": "6400", "password": "' + "ab" * 20 + '"}',
        '{"port": true, "password": "' + "ab" * 20 + '"}',
        '{"port": 70000, "password": "' + "ab" * 20 + '"}',
        '{"port": 6400, "password": "short"}',
        '{"port": 6400, "password": "' + "zz" * 20 + '"}',
        '{"port": 6400, "password": "' + "ab" * 20 + '@evil:1/0"}',
    ],
)
def test_a_damaged_network_file_is_refused_naming_it_and_the_way_out(tmp_path, text):
    (tmp_path / NETWORK_FILE).write_text(text)
    with pytest.raises(ConfigurationError) as refused:
        NetworkAccess.kept_in(tmp_path, Listen(HERE))
    assert str(tmp_path / NETWORK_FILE) in refused.value.detail
    assert "remove it" in refused.value.detail
    assert (tmp_path / NETWORK_FILE).read_text() == text  # left for its owner to see


def test_a_network_file_copied_with_a_looser_mode_is_made_private_again(tmp_path):
    (tmp_path / NETWORK_FILE).write_text('{"port": 6400, "password": "' + "ab" * 20 + '"}')
    os.chmod(tmp_path / NETWORK_FILE, 0o644)
    assert NetworkAccess.load(tmp_path) == NetworkAccess(6400, "ab" * 20)
    assert _mode(tmp_path / NETWORK_FILE) == 0o600


@pytest.mark.parametrize(
    ("given", "address"),
    [("0.0.0.0", "0.0.0.0"), ("::", "::"), (" 10.1.2.3 ", "10.1.2.3"), ("::1", "::1")],
)
def test_listen_takes_an_ip_address(given, address):
    assert listen_address(given) == address


@pytest.mark.parametrize("given", ["lab-pc", "999.1.1.1", "", "127.0.0.1:6379", "0.0.0.0/0"])
def test_listen_refuses_anything_else_saying_what_it_takes(given):
    with pytest.raises(ConfigurationError, match="--listen takes an IP address"):
        listen_address(given)


# -- what another PC is told ----------------------------------------------------------


def test_the_url_for_another_pc_names_a_reachable_host():
    access = NetworkAccess(6400, "ab" * 20)
    assert access.url("10.1.2.3") == f"redis://:{'ab' * 20}@10.1.2.3:6400/0"
    assert access.url("::1") == f"redis://:{'ab' * 20}@[::1]:6400/0"
    assert reachable_host("10.1.2.3") == "10.1.2.3"
    everywhere = reachable_host("0.0.0.0")  # this PC's outgoing address, or else its name
    try:
        assert not ipaddress.ip_address(everywhere).is_unspecified
        assert not ipaddress.ip_address(everywhere).is_loopback
    except ValueError:
        assert everywhere == socket.gethostname()


@pytest.mark.parametrize(
    ("url", "here"),
    [
        ("redis+socket:///lab/.topchef/redis.sock", True),
        ("unix:///lab/.topchef/redis.sock", True),
        ("redis://127.0.0.1:6379/0", True),
        ("redis://localhost:6379/0", True),
        ("redis://[::1]:6379/0", True),
        ("sqlite:////lab/topchef.sqlite3", True),
        ("postgresql://lab@/topchef", True),  # libpq's unix socket
        ("redis://:pw@lab-pc:6379/0", False),
        ("postgresql://lab:pw@10.1.2.3/topchef", False),
    ],
)
def test_only_here_tells_a_server_of_this_pc_from_a_shared_one(url, here):
    assert only_here(url) is here


def _export_line(lines: list[str], variable: str) -> str:
    return next(line for line in lines if line.strip().startswith(f"export {variable}="))


def _exported(line: str, variable: str) -> str:
    """What bash makes of an ``export`` line ``topchef up`` printed: the value another PC gets."""
    script = f'{line}\nprintf %s "${variable}"'
    return subprocess.run(["bash", "-c", script], capture_output=True, text=True).stdout


def test_up_tells_how_a_second_pc_joins_a_stack_that_listens(tmp_path):
    access = NetworkAccess.kept_in(tmp_path, Listen(HERE))
    embedded = keyed(
        Settings(broker_url="redis+socket:///x/redis.sock", database_url="sqlite:///x")
    )
    lines = another_pc(embedded, Listen(HERE), tmp_path, embedded=True)
    export = _export_line(lines, "TOPCHEF_BROKER_URL")
    assert _exported(export, "TOPCHEF_BROKER_URL") == access.url(HERE)
    # The public key as its text: nothing to copy but what is printed.
    public = _export_line(lines, "TOPCHEF_REGISTRATION_PUBLIC_KEY")
    key = read_public(embedded.registration_public_key)
    assert _exported(public, "TOPCHEF_REGISTRATION_PUBLIC_KEY") == key.text
    assert not any(
        read_private(Path(embedded.registration_signing_key)).text in line for line in lines
    )
    assert any("the HTTP API" in line for line in lines)  # SQLite is this PC's alone
    assert not any("export TOPCHEF_DATABASE_URL" in line for line in lines)


def test_up_tells_how_to_open_a_stack_that_does_not_listen(tmp_path):
    embedded = Settings(broker_url="redis+socket:///x/redis.sock", database_url="sqlite:///x")
    (line,) = another_pc(embedded, None, tmp_path, embedded=True)
    assert "topchef up --listen 0.0.0.0" in line


def test_up_says_when_the_broker_it_was_given_is_this_pcs_alone(tmp_path):
    loopback = Settings(broker_url="redis://:pw@127.0.0.1:6379/0", database_url="sqlite:///x")
    (line,) = another_pc(loopback, None, tmp_path, embedded=False)
    assert "Only this PC can reach the broker TOPCHEF_BROKER_URL names" in line
    assert "redis://:***@127.0.0.1:6379/0" in line
    assert "--listen" not in line  # refused with a broker set


def test_up_with_shared_servers_passes_on_both_urls_exactly(tmp_path):
    shared = Settings(
        broker_url="redis://:pa$$'word@lab-redis:6379/0",
        database_url="postgresql://lab:secret@lab-db/topchef",
    )
    lines = another_pc(shared, None, tmp_path, embedded=False)
    broker = _export_line(lines, "TOPCHEF_BROKER_URL")
    database = _export_line(lines, "TOPCHEF_DATABASE_URL")
    assert _exported(broker, "TOPCHEF_BROKER_URL") == shared.broker_url
    assert _exported(database, "TOPCHEF_DATABASE_URL") == shared.database_url


# -- the socket's path ------------------------------------------------------------------


def test_the_socket_is_in_the_stack_directory_when_its_path_fits(tmp_path):
    assert socket_path(tmp_path) == tmp_path.resolve() / SOCKET_FILE


def test_a_directory_too_deep_for_a_unix_socket_gets_a_stable_private_one(tmp_path):
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    path = socket_path(deep)
    assert len(os.fsencode(path)) <= MAX_SOCKET_PATH
    assert socket_path(deep) == path  # the same at every start
    assert socket_path(tmp_path / ("d" * 60) / ("f" * 60)) != path
    assert path.parent.name == f"topchef-{os.getuid()}"
    assert _mode(path.parent) == 0o700


def test_a_shared_or_foreign_socket_directory_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    deep = tmp_path / ("d" * 120)
    shared = tmp_path / f"topchef-{os.getuid()}"
    shared.mkdir(mode=0o755)
    os.chmod(shared, 0o755)
    with pytest.raises(ConfigurationError, match="not a directory of yours alone"):
        socket_path(deep)
    shared.rmdir()
    (tmp_path / "elsewhere").mkdir(mode=0o700)
    shared.symlink_to(tmp_path / "elsewhere")
    with pytest.raises(ConfigurationError, match="not a directory of yours alone"):
        socket_path(deep)


# -- the embedded Redis itself (real redis-server processes) -------------------------------


@pytest.mark.slow
def test_the_embedded_redis_answers_at_the_same_url_after_a_restart_from_a_deep_directory(
    tmp_path,
):
    state = tmp_path / ("d" * 60) / ("e" * 60) / STATE_DIR
    with EmbeddedRedis(state) as first:
        url = first.url
        assert _mode(state / URL_FILE) == 0o600
        assert announced_url(state.parent) == url
    assert not socket_path(state).exists()  # Redis took its socket with it
    assert not (state / URL_FILE).exists()
    with EmbeddedRedis(state) as second:
        assert second.url == url


@pytest.mark.slow
def test_a_socket_a_killed_redis_left_is_replaced_and_a_live_one_refused(tmp_path):
    state = tmp_path / STATE_DIR
    state.mkdir()
    with socket.socket(socket.AF_UNIX) as dead:
        dead.bind(str(socket_path(state)))  # closed without unlinking: what a kill -9 leaves
    with EmbeddedRedis(state) as running:
        assert redis.Redis.from_url(running.url.replace("redis+socket", "unix")).ping()
        with pytest.raises(ConfigurationError, match="a Redis already answers at"):
            EmbeddedRedis(state).start()
        assert redis.Redis.from_url(running.url.replace("redis+socket", "unix")).ping()


@pytest.mark.slow
def test_a_stopped_redis_has_exited_and_taken_its_socket_before_the_next_up_starts(tmp_path):
    """Redis unlinks its socket as the last step of its shutdown: had the next
    `up`'s server made its own socket by then, the old one would remove it."""
    state = tmp_path / STATE_DIR
    for _ in range(3):
        embedded = EmbeddedRedis(state)
        embedded.start()
        pid = embedded.pid
        embedded.stop()
        assert not process_runs(pid)
        assert not socket_path(state).exists()


@pytest.mark.slow
def test_a_redis_killed_outright_leaves_no_socket_once_its_stack_stops(tmp_path):
    state = tmp_path / STATE_DIR
    embedded = EmbeddedRedis(state)
    embedded.start()
    os.kill(embedded.pid, signal.SIGKILL)
    wait_for(lambda: not embedded.running(), 10, "the killed Redis to stop answering")
    embedded.stop()
    assert not socket_path(state).exists()
    with EmbeddedRedis(state) as again:
        assert redis.Redis.from_url(again.url.replace("redis+socket", "unix")).ping()


@pytest.mark.slow
def test_listening_asks_every_connection_for_the_password(tmp_path):
    state = tmp_path / STATE_DIR
    with EmbeddedRedis(state, Listen(HERE)) as embedded:
        access = NetworkAccess.load(state)
        assert access is not None
        assert f":{access.password}@" in embedded.url  # this PC's URL carries it too
        assert masked(embedded.url) == f"redis+socket://:***@{socket_path(state)}"
        assert redis.Redis.from_url(access.url(HERE)).ping()
        assert announced_url(tmp_path) == embedded.url
        once = {"retry": Retry(NoBackoff(), 0)}  # redis-py retries a refused password
        for stranger in (
            redis.Redis(host=HERE, port=access.port, **once),
            redis.Redis.from_url(f"redis://:{'00' * 20}@{HERE}:{access.port}/0", **once),
            redis.Redis(unix_socket_path=str(socket_path(state)), **once),
        ):
            with pytest.raises(redis.AuthenticationError):
                stranger.ping()
    assert NetworkAccess.kept_in(state, Listen(HERE)) == access  # its port is free again


# -- a worker whose broker is gone ---------------------------------------------------------


def test_a_worker_without_its_broker_says_so_once_then_once_a_minute_then_that_it_is_back(
    caplog,
):
    now = [1000.0]
    outage = Outage("redis://:***@lab-pc:6400/0", clock=lambda: now[0])
    refused = ConnectionRefusedError(111, "Connection refused")
    with caplog.at_level(logging.INFO, logger="broker.worker.connection"):
        for _ in range(int(REMIND_SECONDS / RETRY_SECONDS) + 1):  # a minute of tries
            outage.failed(refused, RETRY_SECONDS)
            now[0] += RETRY_SECONDS
        outage.over()
        outage.over()  # connected already: nothing more to say
    said = [record.getMessage() for record in caplog.records]
    assert len(said) == 3, said
    first, reminder, back = said
    assert first.startswith("the message broker redis://:***@lab-pc:6400/0 is out of reach")
    assert "Connection refused" in first
    assert f"trying again every {RETRY_SECONDS:g} s" in first
    assert "for as long as it takes" in first
    assert f"still out of reach after {REMIND_SECONDS:.0f} s" in reminder
    assert back.endswith(f"answers again after {REMIND_SECONDS + RETRY_SECONDS:.0f} s; serving")


def test_every_topchef_process_waits_for_a_lost_broker_without_a_limit():
    app = make_app(Settings(broker_url="redis://127.0.0.1:1/0"))
    assert app.conf.broker_connection_max_retries is None  # 0 would be "never retry"
