"""Where a process's broker and database come from: the variables, a stack here, or nowhere."""

from __future__ import annotations

import pytest

from broker.errors import ConfigurationError
from broker.producer import Producer
from broker.settings import DATABASE_FILE, STATE_DIR, URL_FILE, Settings, masked


def test_nothing_configured_names_no_server():
    settings = Settings()
    assert (settings.broker_url, settings.database_url) == ("", "")
    assert Settings.from_env({}).broker_url == ""  # never redis://127.0.0.1:6379/0


def test_require_says_what_is_missing_and_how_to_name_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigurationError) as both:
        Settings().require(broker=True, database=True)
    message = both.value.detail
    assert f"no TopChef stack in {tmp_path}" in message
    assert "`topchef up`" in message
    assert "TOPCHEF_BROKER_URL and TOPCHEF_DATABASE_URL are not set" in message
    with pytest.raises(ConfigurationError, match="TOPCHEF_BROKER_URL is not set") as broker:
        Settings(database_url="sqlite://").require(broker=True, database=True)
    assert "TOPCHEF_DATABASE_URL" not in broker.value.detail
    assert Settings(broker_url="redis://h/0").require(broker=True) is not None


def test_a_stack_directory_whose_broker_is_gone_is_reported_as_not_running(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / STATE_DIR).mkdir()
    (tmp_path / STATE_DIR / URL_FILE).write_text("redis+socket:///nonexistent/redis.socket\n")
    settings = Settings.from_env({}).with_stack_in(tmp_path)
    assert settings.broker_url == ""  # a stale announcement is not a broker
    with pytest.raises(ConfigurationError, match=f"the TopChef stack in {tmp_path} is not running"):
        settings.require(broker=True)


def test_a_stack_directory_gives_its_database_file_only_if_it_exists(tmp_path):
    assert Settings().with_stack_in(tmp_path).database_url == ""
    assert not (tmp_path / DATABASE_FILE).exists()  # looking created nothing
    (tmp_path / DATABASE_FILE).touch()
    found = Settings().with_stack_in(tmp_path).database_url
    assert found == f"sqlite:///{tmp_path / DATABASE_FILE}"
    assert Settings(database_url="sqlite://").with_stack_in(tmp_path).database_url == "sqlite://"


@pytest.mark.redis
def test_a_running_stack_announces_its_broker(tmp_path, redis_url):
    (tmp_path / STATE_DIR).mkdir()
    (tmp_path / STATE_DIR / URL_FILE).write_text(redis_url + "\n")
    assert Settings().with_stack_in(tmp_path).broker_url == redis_url
    configured = Settings(broker_url="redis://elsewhere:6379/0").with_stack_in(tmp_path)
    assert configured.broker_url == "redis://elsewhere:6379/0"  # the variable wins


def test_a_producer_with_nothing_configured_refuses_in_words(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigurationError, match="topchef up"):
        Producer(Settings())


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://:secret@host:6379/0", "redis://:***@host:6379/0"),
        ("postgresql://lab:secret@db/topchef", "postgresql://lab:***@db/topchef"),
        ("postgresql://lab@db/topchef", "postgresql://lab@db/topchef"),
        ("redis+socket:///tmp/x/redis.socket", "redis+socket:///tmp/x/redis.socket"),
        (
            "redis+socket://:secret@/lab/.topchef/redis.sock",
            "redis+socket://:***@/lab/.topchef/redis.sock",
        ),
    ],
)
def test_masked_hides_only_the_password(url, shown):
    assert masked(url) == shown
