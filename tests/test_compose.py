"""docker-compose.yml stays valid (checked without an engine: `docker-compose config -q`)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

COMPOSE = Path(__file__).parent.parent / "docker-compose.yml"


def _compose() -> str:
    binary = shutil.which("docker-compose")
    if binary is None:
        message = "docker-compose is not installed (Debian package docker-compose)"
        if os.environ.get("CI") == "true":
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    return binary


def _config(env_extra: dict[str, str]) -> subprocess.CompletedProcess[str]:
    required = {"FLOWER_BASIC_AUTH", "REDIS_PASSWORD", "REDIS_WORKER_PASSWORD"}
    env = {k: v for k, v in os.environ.items() if k not in required} | env_extra
    return subprocess.run(
        [_compose(), "-f", str(COMPOSE), "config", "-q"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


PASSWORDS = {"REDIS_PASSWORD": "s3cret", "REDIS_WORKER_PASSWORD": "w0rker"}


def test_compose_file_is_valid():
    result = _config({"FLOWER_BASIC_AUTH": "lab:secret", **PASSWORDS})
    assert result.returncode == 0, result.stderr


def test_flower_refuses_to_start_without_basic_auth():
    result = _config(PASSWORDS)
    assert result.returncode != 0
    assert "FLOWER_BASIC_AUTH" in result.stderr


@pytest.mark.parametrize("missing", sorted(PASSWORDS))
def test_redis_refuses_to_start_without_each_password(missing):
    """Redis is published for remote lab workers, so no user of it is ever open."""
    given = {k: v for k, v in PASSWORDS.items() if k != missing}
    result = _config({"FLOWER_BASIC_AUTH": "lab:secret", **given})
    assert result.returncode != 0
    assert missing in result.stderr


def _options(command: list[str]) -> dict[str, str]:
    """``["redis-server", "--a", "1", "--b", "2"]`` as ``{"--a": "1", "--b": "2"}``."""
    assert command[0] == "redis-server", command
    flags = command[1:]
    assert len(flags) % 2 == 0, command
    assert all(flag.startswith("--") for flag in flags[::2]), command
    return dict(zip(flags[::2], flags[1::2], strict=True))


def test_redis_persists_and_never_evicts():
    """The server's own command line, parsed: a commented-out flag is no flag."""
    compose = yaml.safe_load(COMPOSE.read_text())
    options = _options(compose["services"]["redis"]["command"])
    assert options["--appendonly"] == "yes"
    assert options["--maxmemory-policy"] == "noeviction"


def test_redis_runs_on_the_shipped_users_and_workers_log_in_as_worker():
    """The users' file is the repository's template, rendered at start; a worker is `worker`."""
    compose = yaml.safe_load(COMPOSE.read_text())
    redis = compose["services"]["redis"]
    assert "--requirepass" not in redis["command"]  # the default user is off: users log in
    aclfile = _options(redis["command"])["--aclfile"]
    mounted = {v.split(":")[1]: v.split(":")[0] for v in redis["volumes"]}
    assert mounted["/etc/topchef/redis"] == "./deploy/redis"
    render = redis["entrypoint"][2].split("&&")[0].split()
    assert render == ["sh", "/etc/topchef/redis/acl.sh", "/etc/topchef/redis/users.acl", aclfile]
    assert (COMPOSE.parent / "deploy" / "redis" / "users.acl").is_file()
    worker = compose["services"]["worker"]["environment"]
    assert worker["TOPCHEF_BROKER_URL"].startswith("redis://worker:${REDIS_WORKER_PASSWORD:?")
    assert "TOPCHEF_DATABASE_URL" not in worker  # a worker needs Redis alone
    core = compose["x-environment"]["TOPCHEF_BROKER_URL"]
    assert core.startswith("redis://topchef:${REDIS_PASSWORD:?")


def test_the_private_registration_key_goes_only_where_jobs_are_published():
    """beat and the tools sign; the worker, standing for a lab PC, mounts the public key only."""
    services = yaml.safe_load(COMPOSE.read_text())["services"]

    def volumes(name: str) -> set[str]:
        return {volume.split(":")[0] for volume in services[name].get("volumes", [])}

    assert services["keys"]["command"][:2] == ["keys", "init"]
    for signer in ("beat", "topchef"):
        assert "registration-key" in volumes(signer)
        key = services[signer]["environment"]["TOPCHEF_REGISTRATION_SIGNING_KEY"]
        assert key.startswith("/keys/")
    assert volumes("worker") == {"registration-public", "worker-keys"}
    assert services["worker"]["environment"]["TOPCHEF_REGISTRATION_PUBLIC_KEY"].startswith(
        "/public/"
    )
    assert not any("registration-key" in volumes(name) for name in ("mirror", "flower", "worker"))
