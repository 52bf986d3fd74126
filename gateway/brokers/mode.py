"""Which broker the settings call for: SSE_GATEWAY_REDIS_CLUSTER on, off, or auto (asks the first node at start)."""

from __future__ import annotations

import logging
from urllib.parse import urlsplit

import redis
from redis.exceptions import RedisError

from gateway.brokers.connections import tcp_options
from gateway.config import Settings

log = logging.getLogger("gateway.brokers.mode")


class BrokerModeError(RuntimeError):
    """The Redis named cannot be used as the settings ask: not reachable, or not (or else) a cluster."""


def resolve_cluster_mode(settings: Settings) -> Settings:
    """``settings`` with ``redis_cluster`` "on" or "off"; raises BrokerModeError for a mode the Redis does not have.

    With "off", a Redis that does not answer yet is accepted, as before clusters: the gateway starts and reports
    not ready until it answers. With "auto" or "on" it must answer, since only it can say what it is.
    """
    assert settings.redis_url is not None
    urls = [url.strip() for url in settings.redis_url.split(",") if url.strip()]
    enabled, reasons = None, []
    for url in urls:
        try:
            enabled = _cluster_enabled(url)
            break
        except (RedisError, OSError) as exc:
            reasons.append(f"{_address(url)}: {exc}")
    if enabled is None:
        if settings.redis_cluster == "off" and len(urls) == 1:
            return settings
        raise BrokerModeError(f"no Redis answers at {', '.join(map(_address, urls))} ({'; '.join(reasons)})")
    if settings.redis_cluster == "on" and not enabled:
        raise BrokerModeError(f"redis_cluster is on, but the Redis at {_address(urls[0])} is not in cluster mode")
    if settings.redis_cluster == "off" and enabled:
        raise BrokerModeError(
            f"redis_cluster is off, but the Redis at {_address(urls[0])} is a cluster node (set it to on or auto)"
        )
    if settings.redis_cluster == "off" and len(urls) > 1:
        raise BrokerModeError("several Redis URLs name the seed nodes of a cluster; with one Redis give one URL")
    mode = "on" if enabled else "off"
    log.info("redis %s: %s", "cluster, sharded pub/sub" if enabled else "single node", ", ".join(map(_address, urls)))
    return settings.replace(redis_cluster=mode)


def _cluster_enabled(url: str) -> bool:
    client = redis.Redis.from_url(url, socket_timeout=2, **tcp_options(url))
    try:
        return bool(client.info("cluster").get("cluster_enabled"))
    finally:
        client.close()


def _address(url: str) -> str:
    """host:port (or the socket path), without the scheme or any credentials."""
    parts = urlsplit(url)
    return parts.path if parts.scheme == "unix" else parts.netloc.rpartition("@")[2]
