"""Where a resuming stream's backlog comes from: the ring of recent events when it can vouch for the whole of it, and
otherwise Redis, each page read once for all the streams that ask for it at the same moment. A fresh stream's start
(the channel's newest id, when the ring has none) is read the same way.

A stream may share a page read that another stream started before it attached, but only if no live event of the
channel reached the hub since that read was sent: an event not in the page was then published after Redis ran the
read, so it reaches the late stream live (it was attached by then), and nothing falls between the two. A read that
an event (or a catch-up) overtook serves only the streams already waiting on it; a stream that comes later reads
for itself. A fresh stream's start is shared by the same rule. While the hub hears the channel, a shared answer is
as new as a read of one's own would have been; when nobody here listens to it yet, a stream may start from a tail a
moment older than its connect, and then gets the few events after it from the buffer: late, but none lost and none
twice.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from gateway.brokers.protocol import BACKLOG_PAGE, Broker
from gateway.cursor import StreamId
from gateway.events import Event
from gateway.fanout.joined import JoinedSpans
from gateway.fanout.recent import RecentEvents
from gateway.metrics import BACKLOG_READS

READ, SHARED = BACKLOG_READS.labels("read"), BACKLOG_READS.labels("shared")


class _Read:
    __slots__ = ("task", "overtaken")

    def __init__(self, task: asyncio.Future[Any]) -> None:
        self.task = task
        self.overtaken = False  # a live event of the channel reached the hub after this read was sent


class Backlog:
    def __init__(self, broker: Broker, recent: RecentEvents, *, shared_bytes: bool = True) -> None:
        self.broker = broker
        self.recent = recent
        # The joined frames of spans being replayed, shared by the streams that send them; None: each joins its own.
        self.joined = JoinedSpans() if shared_bytes else None
        self._reads: dict[tuple[str, StreamId | None], _Read] = {}  # (channel, after); after None: the tail
        self._reading: dict[str, int] = {}  # channel -> reads in flight: the hub's test on each live event

    def in_memory(self, channel: str, cursor: StreamId) -> list[Event] | None:
        """The events after ``cursor`` if the ring holds every one of them; else None."""
        return self.recent.since(channel, cursor)

    async def pages(self, channel: str, after: StreamId) -> AsyncIterator[list[Event]]:
        """Pages of buffered events after ``after``, oldest first, as gateway.brokers.protocol.Broker.backlog."""
        while True:
            page = await self._page(channel, after)
            if not page:
                return
            yield page
            if len(page) < BACKLOG_PAGE:
                return
            last = page[-1].stream_id
            assert last is not None
            after = last

    async def tail(self, channel: str) -> StreamId:
        """The channel's newest buffered id (0-0 if none), read once for the fresh streams that ask at one moment."""
        return await self._shared(channel, None)

    async def buffered(self, channel: str) -> bool:
        return await self.broker.buffered(channel)

    def overtaken(self, channel: str) -> None:
        """A live event of ``channel`` reached the hub, or a catch-up of it started: reads in flight are old now."""
        if channel in self._reading:
            for (name, _), read in self._reads.items():
                if name == channel:
                    read.overtaken = True

    @property
    def reading(self) -> bool:
        return bool(self._reading)

    async def _page(self, channel: str, after: StreamId) -> list[Event]:
        return await self._shared(channel, after)

    async def _shared(self, channel: str, after: StreamId | None) -> Any:
        key = (channel, after)
        read = self._reads.get(key)
        if read is None or read.overtaken:
            read = self._reads[key] = _Read(asyncio.ensure_future(self._read(channel, after)))
            self._reading[channel] = self._reading.get(channel, 0) + 1
            read.task.add_done_callback(lambda _: self._done(key, read))
            READ.inc()
        else:
            SHARED.inc()
        # Shielded: a stream that leaves must not cancel the read of those still waiting on it.
        return await asyncio.shield(read.task)

    async def _read(self, channel: str, after: StreamId | None) -> Any:
        if after is None:
            return await self.broker.tail(channel)
        pages = self.broker.backlog(channel, after)
        try:
            return await anext(pages, [])
        finally:
            await pages.aclose()  # type: ignore[attr-defined]

    def _done(self, key: tuple[str, StreamId | None], read: _Read) -> None:
        if self._reads.get(key) is read:
            del self._reads[key]
        channel = key[0]
        self._reading[channel] -= 1
        if not self._reading[channel]:
            del self._reading[channel]
        if not read.task.cancelled():
            read.task.exception()  # retrieved, so a failure that every waiter left before is not logged as lost
