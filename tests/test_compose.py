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
    required = {"FLOWER_BASIC_AUTH", "REDIS_PASSWORD"}
    env = {k: v for k, v in os.environ.items() if k not in required} | env_extra
    return subprocess.run(
        [_compose(), "-f", str(COMPOSE), "config", "-q"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_compose_file_is_valid():
    result = _config({"FLOWER_BASIC_AUTH": "lab:secret", "REDIS_PASSWORD": "s3cret"})
    assert result.returncode == 0, result.stderr


def test_flower_refuses_to_start_without_basic_auth():
    result = _config({"REDIS_PASSWORD": "s3cret"})
    assert result.returncode != 0
    assert "FLOWER_BASIC_AUTH" in result.stderr


def test_redis_refuses_to_start_without_a_password():
    """Redis is published for remote lab workers, so it never runs open."""
    result = _config({"FLOWER_BASIC_AUTH": "lab:secret"})
    assert result.returncode != 0
    assert "REDIS_PASSWORD" in result.stderr


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
    assert options["--requirepass"].startswith("${REDIS_PASSWORD:?")


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
    assert volumes("worker") == {"registration-public"}
    assert services["worker"]["environment"]["TOPCHEF_REGISTRATION_PUBLIC_KEY"].startswith(
        "/public/"
    )
    assert not any("registration-key" in volumes(name) for name in ("mirror", "flower", "worker"))
