"""Fan-out: which local subscribers want which channel, and delivery of each event to all of them.

There is one upstream subscription per channel per process, however many clients listen to it. Delivery calls
``Subscriber.offer`` for each subscriber, which never waits, so one slow client cannot delay the others.
"""

from __future__ import annotations

import asyncio
import logging

from gateway.broker import Broker
from gateway.errors import RedisUnavailable
from gateway.events import Event
from gateway.replay import catch_up
from gateway.subscriber import Subscriber
from gateway.upstream import Upstream

log = logging.getLogger("gateway.hub")

SUBSCRIBE_TIMEOUT = 5.0


class Hub:
    def __init__(self, broker: Broker, redis_url: str) -> None:
        self.broker = broker
        self.upstream = Upstream(redis_url, broker.naming, self.deliver, self._catch_up)
        self._subscribers: dict[str, set[Subscriber]] = {}
        self.evictions = 0
        self.draining = False

    async def start(self) -> None:
        await self.upstream.start()

    async def stop(self) -> None:
        self.drain()
        await self.upstream.stop()

    def deliver(self, event: Event) -> None:
        # Synchronous, and offer() never touches the set, so it cannot change under the loop.
        for subscriber in self._subscribers.get(event.channel, ()):
            subscriber.offer(event)

    async def attach(self, subscriber: Subscriber) -> None:
        """Start delivering the subscriber's channels to it; returns once Redis confirmed every subscription."""
        for channel in subscriber.channels:
            self._subscribers.setdefault(channel, set()).add(subscriber)
        try:
            await asyncio.wait_for(
                asyncio.gather(*(self.upstream.subscribe(c) for c in subscriber.channels)), SUBSCRIBE_TIMEOUT
            )
        except TimeoutError:
            raise RedisUnavailable("Redis did not confirm the subscription in time") from None

    async def detach(self, subscriber: Subscriber) -> None:
        if subscriber.close_reason == "overflow":
            self.evictions += 1
        for channel in subscriber.channels:
            listeners = self._subscribers.get(channel)
            if listeners is None or subscriber not in listeners:
                continue
            listeners.discard(subscriber)
            if not listeners:
                del self._subscribers[channel]
            await self.upstream.unsubscribe(channel)

    def drain(self) -> None:
        """End every open stream and refuse new ones: the server is shutting down."""
        self.draining = True
        self.close_all("shutdown")

    def close_all(self, reason: str) -> None:
        for listeners in list(self._subscribers.values()):
            for subscriber in list(listeners):
                subscriber.close(reason)

    @property
    def connections(self) -> int:
        return len({s for listeners in self._subscribers.values() for s in listeners})

    async def _catch_up(self, channels: list[str]) -> None:
        for channel in channels:
            listeners = [s for s in self._subscribers.get(channel, ()) if s.close_reason is None]
            if listeners:
                await catch_up(self.broker, channel, listeners)
