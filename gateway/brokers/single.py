"""Redis commands the gateway sends: the atomic publish script, replay-buffer reads, health.

Every Redis failure surfaces as RedisUnavailable, so callers handle one error family.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from importlib import resources

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from gateway.brokers.naming import Naming
from gateway.config import Settings
from gateway.cursor import MAX_STREAM_ID, ZERO, StreamId, format_stream_id, parse_stream_id
from gateway.errors import BadRequest, RedisUnavailable
from gateway.sse import event_type_problem

log = logging.getLogger("gateway.brokers.single")

PUBLISH_SCRIPT = resources.files("gateway.brokers").joinpath("publish.lua").read_text()
# Entries read per XRANGE: each page is written to the client before the next is read, bounding its memory.
BACKLOG_PAGE = 100

Entry = tuple[bytes, dict[bytes, bytes]]


def connect(url: str, *, max_connections: int = 64) -> aioredis.Redis:
    """A client whose pool waits for a free connection instead of failing past its size."""
    pool = aioredis.BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=5,
        socket_timeout=5,
        health_check_interval=10,
        **tcp_options(url),
        **_without_maintenance_notifications(),
    )
    return aioredis.Redis(connection_pool=pool)


def _without_maintenance_notifications() -> dict[str, object]:
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


class Broker:
    def __init__(self, client: aioredis.Redis, settings: Settings) -> None:
        self.client = client
        self.naming = Naming(settings.key_prefix)
        self._maxlen = settings.buffer_maxlen
        self._max_age_ms = int(settings.buffer_max_age * 1000)
        self._idle_ttl_ms = int(settings.buffer_idle_ttl * 1000)
        self._publish = client.register_script(PUBLISH_SCRIPT)

    async def publish(self, channel: str, data: str, event_type: str | None = None) -> str:
        """Append to the buffer and publish live, atomically; returns the stream id.

        Raises BadRequest for an event type that could break SSE framing, RedisUnavailable when Redis fails.
        """
        if event_type is not None and (problem := event_type_problem(event_type)):
            raise BadRequest(problem, code="bad_event_type")
        keys = [self.naming.stream_key(channel), self.naming.pubsub_channel(channel)]
        args = [self._maxlen, self._max_age_ms, event_type or "", data, self._idle_ttl_ms]
        try:
            stream_id = await self._publish(keys=keys, args=args)
        except (RedisError, OSError) as exc:
            raise RedisUnavailable(f"Redis is unreachable; the event was not published ({exc})") from exc
        return stream_id.decode() if isinstance(stream_id, bytes) else str(stream_id)

    async def tail(self, channel: str) -> StreamId:
        """The id of the newest buffered entry, or 0-0 for an empty channel."""
        try:
            newest = await self.client.xrevrange(self.naming.stream_key(channel), count=1)
        except (RedisError, OSError) as exc:
            raise RedisUnavailable(f"Redis is unreachable ({exc})") from exc
        return parse_stream_id(newest[0][0].decode()) if newest else ZERO

    async def backlog(self, channel: str, after: StreamId) -> AsyncIterator[list[Entry]]:
        """Pages of buffered entries newer than ``after``, oldest first."""
        if after == MAX_STREAM_ID:
            return  # nothing can come after it, and Redis refuses an exclusive range from it
        key = self.naming.stream_key(channel)
        start = "(" + format_stream_id(after)
        while True:
            try:
                page = await self.client.xrange(key, min=start, max="+", count=BACKLOG_PAGE)
            except (RedisError, OSError) as exc:
                raise RedisUnavailable(f"Redis is unreachable ({exc})") from exc
            if not page:
                return
            yield page
            if len(page) < BACKLOG_PAGE:
                return
            start = "(" + page[-1][0].decode()

    async def buffered(self, channel: str) -> bool:
        """Whether the channel has a buffer in Redis at all: a quiet channel's expires (see publish.lua)."""
        try:
            return bool(await self.client.exists(self.naming.stream_key(channel)))
        except (RedisError, OSError) as exc:
            raise RedisUnavailable(f"Redis is unreachable ({exc})") from exc

    async def ping(self) -> bool:
        try:
            return bool(await self.client.ping())
        except (RedisError, OSError):
            return False


def previous_id(fields: dict[bytes, bytes]) -> StreamId | None:
    """The id of the entry written before this one; None when it was the first of its stream."""
    raw = fields.get(b"p", b"")
    return parse_stream_id(raw.decode()) if raw else None
