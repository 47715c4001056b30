"""Connections to the message broker (Redis), from one URL.

Celery and redis-py spell a Redis unix socket differently (``redis+socket://``
and ``unix://``); TopChef accepts either and gives each library its own form.
"""

from __future__ import annotations

import functools
import logging

import redis

from broker.errors import ConfigurationError

log = logging.getLogger(__name__)

#: Longer than any blocking call TopChef makes (stream reads block ≤ 1 s):
#: redis-py 8's default of 5 s would otherwise be the only bound.
SOCKET_TIMEOUT = 30.0


def redis_url(url: str) -> str:
    """The URL in redis-py's spelling."""
    if not url:
        raise ConfigurationError("no message broker is configured: set TOPCHEF_BROKER_URL")
    if url.startswith("redis+socket://"):
        return "unix://" + url.removeprefix("redis+socket://")
    if url.startswith(("redis://", "rediss://", "unix://")):
        return url
    raise ConfigurationError(
        "TOPCHEF_BROKER_URL must be a Redis URL (redis://, rediss:// or redis+socket://), "
        f"got {url!r}"
    )


def celery_url(url: str) -> str:
    """The URL in Celery's spelling."""
    if url.startswith("unix://"):
        return "redis+socket://" + url.removeprefix("unix://")
    redis_url(url)  # validates
    return url


@functools.lru_cache(maxsize=8)
def redis_client(url: str) -> redis.Redis:
    """One client (and connection pool) per URL per process; fork-safe in redis-py."""
    return redis.Redis.from_url(
        redis_url(url),
        socket_timeout=SOCKET_TIMEOUT,
        socket_connect_timeout=5.0,
        health_check_interval=30,
    )


def text(value: object) -> str:
    """A Redis reply as ``str``: the clients here return bytes."""
    return value.decode() if isinstance(value, bytes) else str(value)


def warn_unless_noeviction(client: redis.Redis) -> bool:
    """Warn when Redis may evict keys: an evicted queue or claim loses jobs.

    Returns whether the policy is safe.
    """
    try:
        policy = client.config_get("maxmemory-policy").get("maxmemory-policy", "")
    except redis.ResponseError:  # CONFIG disabled (managed Redis): cannot tell
        return True
    if policy != "noeviction":
        log.warning(
            "Redis maxmemory-policy is %r; TopChef needs 'noeviction', or Redis may "
            "silently drop queued jobs and claims under memory pressure",
            policy,
        )
        return False
    return True
