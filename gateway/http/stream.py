"""The SSE response: a plain ASGI callable that streams one subscriber's frames to one HTTP client.

It fixes the client's starting position, sends the headers at once, and then a comment, a ``retry:`` hint and that
position as an ``id:``: in the same write as the backlog; alone, when there is no backlog or Redis must confirm the
subscription before it can be read; or with the last words, if the stream ends before any of that. Then the stream
is live: the hub's flusher writes what the subscriber queues (events, and a heartbeat comment whenever the stream has
been quiet), and the stream's own task only finishes a write that had to wait, and writes the last words when the
subscriber is closed.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import random
import time
from collections.abc import Awaitable
from typing import Any, TypeVar

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.brokers.naming import channel_matches
from gateway.config import Settings, split_list
from gateway.cursor import StreamId
from gateway.errors import RedisUnavailable
from gateway.fanout.hub import Hub
from gateway.fanout.replay import known_start, replay, start_positions
from gateway.fanout.stepping import Watch
from gateway.fanout.subscriber import Subscriber
from gateway.fanout.writer import writer_for
from gateway.metrics import OPEN_STREAMS, REFUSED, REPLAYS, STREAMS_CLOSED
from gateway.sse import START_EVENT, encode_comment, encode_retry

log = logging.getLogger("gateway.http.stream")

HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]
# The retry: hint again, as a header: EventSource keeps the hint to itself, and a page that shows when its feed will
# be back (the page helper, clients/web/sse-gateway.js) reads it from a HEAD of the stream.
RETRY_HEADER = "X-SSE-Retry"


@functools.cache
def stream_headers(retry_ms: int) -> list[tuple[bytes, bytes]]:
    return [*HEADERS, (RETRY_HEADER.lower().encode(), str(retry_ms).encode())]


STREAM_HOST = "gateway.stream_host"
T = TypeVar("T")


class EventStream:
    """The response of the /events routes. The app's stack runs its start; StreamHost then runs its body.

    Thousands are open at once for hours, so a stream keeps its state in slots and, once live, waits in one
    coroutine frame: its writes are the flusher's (gateway.fanout.flusher) and its disconnect is watched without a task.
    """

    __slots__ = (
        "hub", "channels", "cursor", "settings", "expires_at", "start_event",
        "_subscriber", "_opening", "_opened", "_client", "_send",
    )  # fmt: skip

    def __init__(
        self,
        hub: Hub,
        channels: tuple[str, ...],
        cursor: dict[str, StreamId] | None,
        settings: Settings,
        *,
        expires_at: float | None = None,
        start_event: bool = False,
    ) -> None:
        self.hub = hub
        self.channels = channels
        self.cursor = cursor
        self.settings = settings
        self.expires_at = expires_at
        self.start_event = start_event

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        settings = self.settings
        patterns = settings.conflate_channels
        subscriber = Subscriber(
            self.channels,
            max_events=settings.client_buffer_events,
            max_bytes=settings.client_buffer_bytes,
            conflate=[c for c in self.channels if _conflated(patterns, c)] if patterns else (),
            heartbeat=settings.heartbeat,
            send_timeout=settings.send_timeout,
            expires_at=self.expires_at,
        )
        if self.hub.connections >= settings.max_connections:
            REFUSED.labels("max_connections").inc()
            await _turn_away(send, settings.retry_ms)
            return
        self.hub.open(subscriber)
        OPEN_STREAMS.inc()
        self._subscriber, self._opened = subscriber, time.monotonic()
        self._client = scope.get("client")
        if log.isEnabledFor(logging.INFO):  # the fields are built only for a line that is written
            log.info("stream opened", extra={"fields": {**self._fields(), "resume": self.cursor is not None}})
        try:
            self._opening = await self._opening_lines(subscriber)
            await send({"type": "http.response.start", "status": 200, "headers": stream_headers(settings.retry_ms)})
        except BaseException:
            self._ended()
            raise
        later = scope.get(STREAM_HOST)
        if later is None:
            await self.run(receive, send)
        else:
            later.append(self)

    async def run(self, receive: Receive, send: Send) -> None:
        """The stream's body, from its opening lines to its last; a Redis failure or a bug ends it cleanly."""
        subscriber = self._subscriber
        self._send = send
        watch: _DisconnectWatch | None = None
        try:
            watch = _DisconnectWatch(receive, subscriber)
            subscriber.writer = asyncio.current_task()
            try:
                if subscriber.close_reason is None:
                    await self._replay()
                while subscriber.close_reason is None:
                    await subscriber.wait()
                    await subscriber.finish_write()  # a write handed over before a close is finished too
                if subscriber.close_reason == "shutdown":
                    # Spread the reconnects of many clients over a window rather than one instant.
                    await self._write(encode_retry(self.settings.retry_ms + random.randint(0, self.settings.retry_ms)))
            except RedisUnavailable as exc:
                # A transient problem ends the stream (the client retries); a 5xx would stop a browser for good.
                subscriber.close("redis_unavailable")
                log.warning("stream closed: %s", exc.detail)
            except Exception:
                subscriber.close("error")
                log.exception("stream failed")
            await self._write(b"", more=False)
        except asyncio.CancelledError:
            if not subscriber.writer_cancelled:
                raise
            # Closed while blocked writing to a client that stopped reading: this response cannot end cleanly.
            asyncio.current_task().uncancel()
        finally:
            subscriber.writer = None
            if subscriber.close_reason is None:  # cancelled from outside: the flusher must not write to it any more
                subscriber.close("ended")
            subscriber.drop_blocked()
            if watch is not None:
                watch.cancel()
            self._ended()

    def abandon(self) -> None:
        """End a stream whose body will never run (the app failed after its response started)."""
        self._subscriber.close("error")
        self._ended()

    async def _opening_lines(self, subscriber: Subscriber) -> bytes:
        """Fix the starting position, and return the stream's first bytes."""
        # Fixed before the client sees the stream open, so nothing published after its `onopen` counts as old.
        try:
            # Known at once for a resume, or from the rings: a task to wait on Redis is made only when Redis is asked.
            positions = known_start(self.hub.backlog, self.channels, self.cursor)
            if positions is None:
                positions = await _unless_closed(
                    subscriber, start_positions(self.hub.backlog, self.channels, self.cursor)
                )
        except RedisUnavailable as exc:
            subscriber.close("redis_unavailable")
            log.warning("stream closed: %s", exc.detail)
            positions = None
        opening = encode_comment("connected") + encode_retry(self.settings.retry_ms)
        if positions is not None:
            subscriber.start_at(positions)
            # The id tells a client that receives no event before it drops where to resume from; a script sees it
            # only in an event.
            start = f"id: {subscriber.last_event_id}\n"
            if self.start_event:
                start += f"event: {START_EVENT}\ndata:\n"
            opening = opening[:-1] + (start + "\n").encode()
        return opening

    async def _replay(self) -> None:
        subscriber = self._subscriber
        waiting = self.hub.attach(subscriber)  # step 1 of the replay (see gateway.fanout.replay)
        if waiting is not None:
            try:
                await self._write(b"")  # the opening lines now, while Redis confirms the subscription
            except BaseException:
                waiting.close()  # never to be awaited: closed, so that it is not reported as forgotten
                raise
            await waiting
        if subscriber.close_reason is not None:
            return  # it left while Redis was being waited on: no backlog to read for it
        await replay(self.hub.backlog, subscriber, self._write)
        if self.cursor is not None:
            REPLAYS.labels("miss" if subscriber.gaps_sent else "hit").inc()
        if self._opening:
            await self._write(b"")  # no backlog to carry the opening lines: they go alone, before anything live
        # Live: the flusher writes from here on; this task steps in only for a write that has to wait.
        subscriber.go_direct(writer_for(self._send, self.settings.write_path), self.hub.flusher.schedule)

    async def _write(self, body: bytes, more: bool = True) -> None:
        """Write from the stream's own task; the opening lines, until they are sent, go first in the same write (with
        the backlog, so a resume takes one write; or with the last words, if the stream ends before any)."""
        # A write that never finishes (a client that reads nothing) is found by the hub's tick: see tick().
        if self._opening:
            body, self._opening = self._opening + body, b""
        subscriber = self._subscriber
        subscriber.writing, subscriber.write_started = True, time.monotonic()
        try:
            await self._send({"type": "http.response.body", "body": body, "more_body": more})
        finally:
            subscriber.writing, subscriber.last_write = False, time.monotonic()

    def _ended(self) -> None:
        subscriber = self._subscriber
        self.hub.detach(subscriber)
        OPEN_STREAMS.dec()
        reason = subscriber.close_reason or "ended"
        STREAMS_CLOSED.labels(reason).inc()
        if log.isEnabledFor(logging.INFO):
            seconds = round(time.monotonic() - self._opened, 3)
            log.info("stream closed", extra={"fields": {**self._fields(), "reason": reason, "seconds": seconds}})

    def _fields(self) -> dict[str, object]:
        return {"channels": ",".join(self.channels), "client": "%s:%s" % (self._client or ("-", 0))}


async def _turn_away(send: Send, retry_ms: int) -> None:
    """A 200 that ends at once and asks the client to come back later: a browser would give up on any other status."""
    wait = 10 * retry_ms + random.randint(0, 10 * retry_ms)
    await end_at_once(send, "too many connections; retry later", wait, b"max_connections")


async def end_at_once(send: Send, why: str, retry_ms: int, refused: bytes) -> None:
    """A stream that ends as it starts, asking the client to come back after ``retry_ms``: a 200, since a browser
    gives up for good on any other status. ``refused`` names the reason in an X-SSE-Refused header."""
    body = encode_comment(why) + encode_retry(retry_ms)
    headers = [*HEADERS, (b"x-sse-refused", refused)]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


class StreamHost:
    """Outermost ASGI wrapper: runs an event stream's body once the app's own stack has returned.

    Routing, authentication and the middlewares (errors, access log, CORS) are done with a stream once its response
    has started; the stream itself may then last for hours. Run out here, with the server's own ``send`` and
    ``receive``, it keeps none of their frames alive meanwhile and spares every write their wrappers.
    """

    def __init__(self, app: ASGIApp, starlette: Any = None) -> None:
        self.app = app
        self.starlette = starlette  # the Starlette app inside, for its state and routes (tests reach them here)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        # A list, not a scope key to read back: it is shared even with a middleware that copies the scope.
        later: list[EventStream] = []
        scope[STREAM_HOST] = later
        try:
            await self.app(scope, receive, send)
        except BaseException:
            for stream in later:
                stream.abandon()
            raise
        for stream in later:
            await stream.run(receive, send)


@functools.lru_cache(maxsize=4096)
def _conflated(patterns: str, channel: str) -> bool:
    """Whether the channel is one of the conflated globs: matched once per channel, not once per connection."""
    return channel_matches(channel, split_list(patterns))


async def _unless_closed(subscriber: Subscriber, work: Awaitable[T]) -> T | None:
    """The result of ``work``, or None as soon as the subscriber is closed (a drain must not wait on Redis)."""
    task = asyncio.ensure_future(work)
    closed = asyncio.ensure_future(subscriber.until_closed())
    try:
        await asyncio.wait({task, closed}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        closed.cancel()
    if not task.done():
        task.cancel()
        return None
    return task.result()


class _DisconnectWatch:
    """Closes the subscriber when the client goes away: receive() stepped by callbacks, not a task per stream."""

    __slots__ = ("_receive", "_subscriber", "_watch")

    def __init__(self, receive: Receive, subscriber: Subscriber) -> None:
        self._receive, self._subscriber = receive, subscriber
        self._listen()

    def _listen(self) -> None:
        self._watch = Watch(self._receive(), self._received)
        self._watch.start()

    def _received(self, message: Message | None) -> None:
        if message is None or message["type"] == "http.disconnect":
            self._subscriber.close("client_left")
        elif self._subscriber.close_reason is None:
            self._listen()  # that was the request's (empty) body: the disconnect comes after it

    def cancel(self) -> None:
        self._watch.cancel()
