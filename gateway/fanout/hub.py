"""Fan-out: which local subscribers want which channel, and delivery of each event to all of them.

There is one upstream subscription per channel per process, however many clients listen to it. Delivery calls
``Subscriber.offer`` for each subscriber, which never waits, so one slow client cannot delay the others; the hub's
flusher then writes what was queued (see gateway.fanout.flusher).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable

from gateway.brokers.protocol import Broker
from gateway.cursor import StreamId
from gateway.errors import RedisUnavailable
from gateway.events import Event
from gateway.fanout.backlog import Backlog
from gateway.fanout.flusher import Flusher
from gateway.fanout.recent import Limits, RecentEvents
from gateway.fanout.replay import catch_up
from gateway.fanout.subscriber import Subscriber
from gateway.metrics import EVICTIONS
from gateway.tasks import stop_task

log = logging.getLogger("gateway.fanout.hub")

SUBSCRIBE_TIMEOUT = 5.0
# A channel's ring outlives its last local subscriber by this long, as its upstream subscription does
# (gateway.brokers.upstream): clients that drop and come back at once resume from memory.
FORGET_DELAY = 1.0
NO_RING = Limits(events=0, bytes=0, total_events=0, total_bytes=0, max_age_ms=0, expiry_ms=0)


class Hub:
    def __init__(
        self, broker: Broker, *, tick: float = 1.0, recent: Limits = NO_RING, shared_replay_bytes: bool = True
    ) -> None:
        self.broker = broker
        self.recent = RecentEvents(recent)
        self.backlog = Backlog(broker, self.recent, shared_bytes=shared_replay_bytes)
        self._tick_interval = tick
        self._ticker: asyncio.Task[None] | None = None
        self._subscribers: dict[str, set[Subscriber]] = {}
        self.flusher = Flusher()
        # Every stream from its first moment to its end, attached or not yet, so a drain reaches all of them.
        self._open: set[Subscriber] = set()
        self.draining = False

    async def start(self) -> None:
        await self.broker.start(self.deliver, self._catch_up)
        self._ticker = asyncio.create_task(self._tick(), name="gateway-ticker")

    async def stop(self) -> None:
        """End every stream and the ticker; the broker's owner closes the broker."""
        self.drain()
        await stop_task(self._ticker)

    async def _tick(self) -> None:
        """One timer for every stream: heartbeats, token expiry and stalled writes are checked here."""
        while True:
            await asyncio.sleep(self._tick_interval)
            now, wall = time.monotonic(), time.time()
            for subscriber in list(self._open):
                try:
                    subscriber.tick(now, wall)
                except Exception:  # one stream's trouble must not stop the heartbeats of all the others
                    log.exception("tick failed for a stream of %s", ",".join(subscriber.channels))

    def deliver(self, event: Event) -> None:
        # Synchronous, and offer() never touches the set, so it cannot change under the loop.
        self.recent.add(event)
        if self.backlog.reading and event.stream_id is not None:  # an event with no id is in no backlog read
            self.backlog.overtaken(event.channel)
        for subscriber in self._subscribers.get(event.channel, ()):
            subscriber.offer(event)

    def open(self, subscriber: Subscriber) -> None:
        """Register a new stream; during a drain it is closed at once."""
        self._open.add(subscriber)
        if self.draining:
            subscriber.close("shutdown")

    def attach(self, subscriber: Subscriber) -> Awaitable[None] | None:
        """Start delivering the subscriber's channels to it. None if Redis has confirmed every subscription already;
        else the wait for that, to be awaited before its backlog is read.

        The wait returns early if the subscriber is closed meanwhile, and raises RedisUnavailable if Redis does not
        confirm.
        """
        confirmations = []
        for channel in subscriber.channels:
            # The broker first: if it refuses (no node serves the channel), detach must not unsubscribe it.
            confirmation = self.broker.subscribe(channel)
            confirmations.append(confirmation)
            self._subscribers.setdefault(channel, set()).add(subscriber)
            self.recent.keep(channel)
            if not confirmation.is_set():
                # A subscription starting afresh (its channel was dropped at a reconnect, say) has heard nothing yet,
                # and will not catch up what came before it: the ring cannot vouch for its past.
                self.recent.restart(channel)
        unconfirmed = [c for c in confirmations if not c.is_set()]
        return self._confirmed(subscriber, unconfirmed) if unconfirmed else None

    async def _confirmed(self, subscriber: Subscriber, confirmations: list[asyncio.Event]) -> None:
        pending = [asyncio.ensure_future(c.wait()) for c in confirmations]
        closed = asyncio.ensure_future(subscriber.until_closed())
        try:
            # return_exceptions: when the client leaves first, the cancelled waits are the gather's result, not an
            # error that nobody retrieves (asyncio would log it).
            confirmed = asyncio.gather(*pending, return_exceptions=True)
            done, _ = await asyncio.wait({confirmed, closed}, timeout=SUBSCRIBE_TIMEOUT, return_when="FIRST_COMPLETED")
            if not done:
                raise RedisUnavailable("Redis did not confirm the subscription in time")
        finally:
            for future in (*pending, closed):
                future.cancel()

    def detach(self, subscriber: Subscriber) -> None:
        self._open.discard(subscriber)
        if subscriber.close_reason in ("overflow", "stalled"):
            EVICTIONS.labels(subscriber.close_reason).inc()
        for channel in subscriber.channels:
            listeners = self._subscribers.get(channel)
            if listeners is None or subscriber not in listeners:
                continue
            listeners.discard(subscriber)
            if not listeners:
                del self._subscribers[channel]
                if self.recent.enabled:
                    asyncio.get_running_loop().call_later(FORGET_DELAY, self._forget_if_idle, channel)
            self.broker.unsubscribe(channel)

    def _forget_if_idle(self, channel: str) -> None:
        if channel not in self._subscribers:
            self.recent.forget(channel)

    def drain(self) -> None:
        """End every open stream and refuse new ones: the server is shutting down."""
        self.draining = True
        for subscriber in list(self._open):
            subscriber.close("shutdown")

    @property
    def connections(self) -> int:
        return len(self._open)

    async def _catch_up(self, channel: str, until: StreamId | None) -> None:
        listeners = [s for s in self._subscribers.get(channel, ()) if s.close_reason is None]
        self.backlog.overtaken(channel)
        if not listeners:
            self.recent.restart(channel)  # what was missed is read by nobody: the ring would claim a hole
            return
        self.recent.catching_up(channel, True)
        try:
            await catch_up(self.broker, channel, listeners, until, record=self.recent.add)
        except BaseException:
            self.recent.restart(channel)  # a part of the hole may be unfilled
            raise
        finally:
            self.recent.catching_up(channel, False)
