"""How the gateway connects to Redis: pool sizes, timeouts and keepalive, the same for every broker."""

from __future__ import annotations

import redis.asyncio as aioredis
from redis.exceptions import RedisClusterException, RedisError

from gateway.config import REDIS_SOCKET_TIMEOUT

# Everything a Redis command can fail with: redis-py's cluster client raises some failures (a slot with no owner, a
# cluster it cannot reach) outside its RedisError family.
REDIS_FAILURES = (RedisError, RedisClusterException, OSError)


def connect(url: str, *, max_connections: int = 64) -> aioredis.Redis:
    """A client whose pool waits for a free connection instead of failing past its size."""
    pool = aioredis.BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=5,
        socket_timeout=REDIS_SOCKET_TIMEOUT,
        health_check_interval=10,
        **tcp_options(url),
        **without_maintenance_notifications(),
    )
    return aioredis.Redis.from_pool(pool)  # from_pool: closing the client closes its pool's connections too


def without_maintenance_notifications() -> dict[str, object]:
    """redis-py 8 skips its check for dead pooled connections while maintenance notifications are on ("auto"), so
    after a Redis restart every idle connection would fail its next command; the gateway needs no such notifications.
    """
    try:
        from redis.maint_notifications import MaintNotificationsConfig
    except ImportError:  # redis-py before 7 has neither the notifications nor the problem
        return {}
    return {"maint_notifications_config": MaintNotificationsConfig(enabled=False)}


def tcp_options(url: str) -> dict[str, object]:
    """Connect timeout and keepalive, which only TCP connections take (a unix socket refuses them)."""
    if url.startswith("unix:"):
        return {}
    return {"socket_connect_timeout": 2, "socket_keepalive": True}
