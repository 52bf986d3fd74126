"""The SSE response: a plain ASGI callable that writes one subscriber's frames to one HTTP client.

It flushes the headers at once with a comment and a ``retry:`` hint, replays the backlog, then writes whatever the
subscriber has queued, in one write per wake-up, with a heartbeat comment whenever the stream has been quiet.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time

from starlette.types import Receive, Scope, Send

from gateway.config import Settings
from gateway.cursor import StreamId
from gateway.errors import RedisUnavailable
from gateway.hub import Hub
from gateway.replay import replay, start_positions
from gateway.sse import encode_comment, encode_retry
from gateway.subscriber import Subscriber

log = logging.getLogger("gateway.stream")

HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]
HEARTBEAT = encode_comment("keepalive")


class EventStream:
    def __init__(
        self,
        hub: Hub,
        channels: tuple[str, ...],
        cursor: dict[str, StreamId] | None,
        settings: Settings,
        *,
        expires_at: float | None = None,
    ) -> None:
        self.hub = hub
        self.channels = channels
        self.cursor = cursor
        self.settings = settings
        self.expires_at = expires_at

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        settings = self.settings
        subscriber = Subscriber(
            self.channels, max_events=settings.client_buffer_events, max_bytes=settings.client_buffer_bytes
        )
        if self.hub.draining:
            subscriber.close("shutdown")

        async def write(body: bytes) -> None:
            subscriber.writing = True
            try:
                await send({"type": "http.response.body", "body": body, "more_body": True})
            finally:
                subscriber.writing = False

        if subscriber.close_reason is None:
            # Fixed before the client sees the stream open, so nothing published after its `onopen` counts as old.
            try:
                subscriber.start_at(await start_positions(self.hub.broker, self.channels, self.cursor))
            except RedisUnavailable as exc:
                subscriber.close("redis_unavailable")
                log.warning("stream closed: %s", exc.detail)

        await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
        await write(encode_comment("connected") + encode_retry(settings.retry_ms))
        watcher = asyncio.create_task(_close_on_disconnect(receive, subscriber))
        subscriber.writer = asyncio.current_task()
        log.debug("stream opened channels=%s", ",".join(subscriber.channels))
        try:
            if subscriber.close_reason is None:
                await replay(self.hub.broker, self.hub, subscriber, write)
            while subscriber.close_reason is None:
                if not await subscriber.wait(self._quiet_limit()):
                    if self._expired():
                        subscriber.close("auth_expired")
                        break
                    await write(HEARTBEAT)
                elif chunk := subscriber.take():
                    await write(chunk)
            if subscriber.close_reason == "shutdown":
                # Spread the reconnects of many clients over a window rather than one instant.
                await write(encode_retry(settings.retry_ms + random.randint(0, settings.retry_ms)))
        except RedisUnavailable as exc:
            # A transient problem ends the stream (the client retries); a 5xx would stop a browser for good.
            subscriber.close("redis_unavailable")
            log.warning("stream closed: %s", exc.detail)
        except Exception:
            subscriber.close("error")
            log.exception("stream failed")
        except asyncio.CancelledError:
            if subscriber.close_reason != "overflow":
                raise
            # Evicted while blocked writing to a client that stopped reading: give up on this response.
            asyncio.current_task().uncancel()
            return
        finally:
            subscriber.writer = None
            watcher.cancel()
            await self.hub.detach(subscriber)
            log.debug("stream closed reason=%s", subscriber.close_reason)
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    def _quiet_limit(self) -> float:
        """How long to wait for frames: the heartbeat interval, or less when the token expires sooner."""
        if self.expires_at is None:
            return self.settings.heartbeat
        return max(0.0, min(self.settings.heartbeat, self.expires_at - time.time()))

    def _expired(self) -> bool:
        return self.expires_at is not None and time.time() >= self.expires_at


async def _close_on_disconnect(receive: Receive, subscriber: Subscriber) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            subscriber.close("client_left")
            return
