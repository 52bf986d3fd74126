"""The process's one Redis Pub/Sub connection: reference-counted subscriptions, reconnect with backoff.

Pub/Sub delivers at most once, so whatever was published while the connection was down is gone from it. After
every reconnect the upstream resubscribes, waits for Redis to confirm, and then calls ``on_resubscribed`` so the
hub can fill the gap from the replay buffers before any newer live message is read.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Awaitable, Callable

import redis.asyncio as aioredis
from redis.backoff import NoBackoff
from redis.exceptions import RedisError
from redis.retry import Retry

from gateway.broker import tcp_options
from gateway.events import Event, decode_pubsub
from gateway.naming import Naming

log = logging.getLogger("gateway.upstream")

# A connection that has been silent this long is pinged; one silent twice as long is taken for dead. This catches
# half-open sockets that a blocking read would wait on for ever.
SILENCE_BEFORE_PING = 5.0
BACKOFF_START, BACKOFF_MAX = 0.05, 2.0


class Upstream:
    def __init__(
        self,
        url: str,
        naming: Naming,
        on_event: Callable[[Event], None],
        on_resubscribed: Callable[[list[str]], Awaitable[None]],
    ) -> None:
        # Its own client with no retries inside redis-py: every failure must reach the loop below, which alone
        # knows that a catch-up read is needed after the reconnect.
        self._client = aioredis.Redis.from_url(url, retry=Retry(NoBackoff(), 0), **tcp_options(url))
        self._naming = naming
        self._on_event = on_event
        self._on_resubscribed = on_resubscribed
        self._refcounts: dict[str, int] = {}
        # One future per SUBSCRIBE sent, resolved in order by Redis's confirmations.
        self._confirmations: dict[str, deque[asyncio.Future[None]]] = {}
        self._pubsub: aioredis.client.PubSub | None = None
        self._task: asyncio.Task[None] | None = None
        self.connected = asyncio.Event()
        self.reconnects = 0

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="gateway-upstream")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._client.aclose()

    async def subscribe(self, channel: str) -> None:
        """Count one more local subscriber; the first one subscribes upstream and waits for Redis to confirm."""
        count = self._refcounts.get(channel, 0)
        self._refcounts[channel] = count + 1
        if count:
            waiting = self._confirmations.get(channel)
            if waiting:
                await asyncio.shield(waiting[-1])
            return
        confirmed = self._expect_confirmation(channel)
        if self._pubsub is not None and self.connected.is_set():
            # On failure the reader loop notices too, reconnects and subscribes every wanted channel.
            with contextlib.suppress(RedisError, OSError):
                await self._pubsub.subscribe(self._naming.pubsub_channel(channel))
        await asyncio.shield(confirmed)

    async def unsubscribe(self, channel: str) -> None:
        count = self._refcounts.get(channel, 0) - 1
        if count > 0:
            self._refcounts[channel] = count
            return
        self._refcounts.pop(channel, None)
        # Pending confirmations stay queued: Redis still answers the SUBSCRIBEs they stand for, in order.
        if self._pubsub is not None and self.connected.is_set():
            with contextlib.suppress(RedisError, OSError):
                await self._pubsub.unsubscribe(self._naming.pubsub_channel(channel))

    @property
    def channels(self) -> list[str]:
        return list(self._refcounts)

    def _expect_confirmation(self, channel: str) -> asyncio.Future[None]:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._confirmations.setdefault(channel, deque()).append(future)
        return future

    async def _run(self) -> None:
        backoff = BACKOFF_START
        while True:
            try:
                await self._session()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - whatever broke the connection, the cure is a new one
                self.connected.clear()
                self.reconnects += 1
                log.warning("redis pub/sub connection lost (%s); reconnecting in %.2fs", exc, backoff)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, BACKOFF_MAX)
            if self.connected.is_set():
                backoff = BACKOFF_START

    async def _session(self) -> None:
        """One connection's life: subscribe to every wanted channel, catch up, then read until it fails."""
        pubsub = self._client.pubsub()
        try:
            await pubsub.ping()  # connects; raises if Redis is not there
            wanted = self.channels
            self._renew_confirmations(wanted)
            if wanted:
                await pubsub.subscribe(*(self._naming.pubsub_channel(c) for c in wanted))
            self._pubsub = pubsub
            self.connected.set()
            await self._read(pubsub, catch_up=set(wanted) if self.reconnects else set())
        finally:
            self._pubsub = None
            self.connected.clear()
            await pubsub.aclose()

    def _renew_confirmations(self, wanted: list[str]) -> None:
        """A new connection answers only its own SUBSCRIBEs: one per wanted channel stands in for all older ones."""
        stale, self._confirmations = self._confirmations, {}
        for channel in wanted:
            fresh = self._expect_confirmation(channel)
            for older in stale.pop(channel, ()):
                fresh.add_done_callback(lambda _, older=older: older.done() or older.set_result(None))
        for leftovers in stale.values():
            for older in leftovers:
                older.cancel()

    async def _read(self, pubsub: aioredis.client.PubSub, catch_up: set[str]) -> None:
        loop = asyncio.get_running_loop()
        last_heard = loop.time()
        pinged = False
        while True:
            message = await pubsub.get_message(timeout=1.0)
            now = loop.time()
            if message is None:
                silence = now - last_heard
                if silence > 2 * SILENCE_BEFORE_PING:
                    raise TimeoutError(f"no reply from Redis for {silence:.1f}s")
                if silence > SILENCE_BEFORE_PING and not pinged:
                    await pubsub.ping()
                    pinged = True
                continue
            last_heard, pinged = now, False
            kind = message["type"]
            if kind == "message":
                channel = self._naming.channel_of(message["channel"].decode())
                if channel is not None:
                    self._on_event(decode_pubsub(channel, message["data"]))
            elif kind == "subscribe":
                channel = self._naming.channel_of(message["channel"].decode())
                waiting = self._confirmations.get(channel or "")
                if waiting:
                    confirmed = waiting.popleft()
                    if not confirmed.done():
                        confirmed.set_result(None)
                if channel in catch_up:
                    # Live again: fill what Pub/Sub dropped while the connection was down, before reading on, so
                    # that the channel's events still reach subscribers in order.
                    catch_up.discard(channel)
                    await self._on_resubscribed([channel])
