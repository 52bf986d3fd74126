"""Exact resume: no gap, no duplicate.

A subscriber is brought up to date in this order, and only this order is race-free:

1. subscribe upstream and wait for Redis to confirm (``Hub.attach``, which the stream calls first); from then on live
   events are *held* by the subscriber;
2. take the backlog after the subscriber's cursor from the ring of recent events, in the same step as nothing can be
   delivered meanwhile, if the ring vouches for all of it (gateway.fanout.recent); otherwise read it with XRANGE and
   send it, page by page, with one ``gap`` event wherever entries after the last position sent were already trimmed
   (or the whole buffer expired);
3. go live: queue the held events, dropping every id at or below the last one sent.

A fresh connection (no Last-Event-ID) takes each channel's newest buffered id as its cursor, read *before* step 1,
so an event published during steps 1-2 is not lost either: the newest id the ring holds will do, as every event
after it still reaches the subscriber live.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from gateway.brokers.protocol import Broker
from gateway.cursor import ZERO, StreamId
from gateway.events import Event
from gateway.fanout.backlog import Backlog
from gateway.fanout.subscriber import Subscriber
from gateway.metrics import BACKLOG_SOURCES

FROM_MEMORY, FROM_REDIS = BACKLOG_SOURCES.labels("memory"), BACKLOG_SOURCES.labels("redis")


def trimmed_after(position: StreamId, first: Event) -> StreamId | None:
    """The first id still buffered, if entries between ``position`` and it were trimmed; else None.

    Each entry stores the id written before it, so "trimmed right up to the cursor" (no gap) and "entries after the
    cursor are gone" (a gap) are told apart exactly. Before the first entry of its stream (previous 0-0) only a
    cursor of 0-0 has nothing missing.
    """
    first_id = first.stream_id
    assert first_id is not None, "buffered events have ids"
    if first_id <= position:
        return None
    before = first.previous
    lost = position != ZERO if before is None or before == ZERO else before > position
    return first_id if lost else None


def known_start(
    backlog: Backlog, channels: tuple[str, ...], cursor: dict[str, StreamId] | None
) -> dict[str, StreamId] | None:
    """The start positions if they are known without asking Redis (a resume, or rings holding every channel)."""
    if cursor is not None:
        return cursor
    positions = {}
    for channel in channels:
        newest = backlog.recent.newest(channel)
        if newest is None:
            return None
        positions[channel] = newest
    return positions


async def start_positions(
    backlog: Backlog, channels: tuple[str, ...], cursor: dict[str, StreamId] | None
) -> dict[str, StreamId]:
    """The cursor a stream starts from: the client's Last-Event-ID, or else the newest id of each channel."""
    if cursor is not None:
        return cursor
    positions = {}
    for channel in channels:
        newest = backlog.recent.newest(channel)
        positions[channel] = newest if newest is not None else await backlog.tail(channel)
    return positions


async def replay(backlog: Backlog, subscriber: Subscriber, send: Callable[[bytes], Awaitable[None]]) -> None:
    """Steps 2-3 above, for a subscriber the hub has attached (step 1). Raises RedisUnavailable if Redis fails."""
    for channel in subscriber.channels:
        position = subscriber.positions[channel]
        recent = backlog.in_memory(channel, position)
        if recent is not None:
            FROM_MEMORY.inc()
            _accept(backlog, subscriber, channel, recent)  # written with the next page, or at the end
            continue
        FROM_REDIS.inc()
        pages = 0
        async for page in backlog.pages(channel, position):
            pages += 1
            # Checked on every page: the buffer may be trimmed past a page's end while it is being sent.
            _offer_gap_if_trimmed(subscriber, channel, page[0])
            _accept(backlog, subscriber, channel, page)
            if subscriber.close_reason is not None:
                return
            await send(subscriber.take())
        if not pages and position != ZERO and not await backlog.buffered(channel):
            # The channel's buffer expired while it was quiet: whatever came after the cursor is gone with it.
            subscriber.offer_gap(channel, position, ZERO)
    if subscriber.close_reason is None:
        if subscriber.queued:
            await send(subscriber.take())
        subscriber.go_live()


async def catch_up(
    broker: Broker,
    channel: str,
    listeners: list[Subscriber],
    until: StreamId | None = None,
    *,
    record: Callable[[Event], None] | None = None,
) -> None:
    """After the upstream reconnects, or a live event showed one missed: deliver what Pub/Sub dropped, from the
    buffer, to the channel's listeners (up to ``until``, when the live event that showed it is known), and to
    ``record`` (the ring of recent events)."""
    oldest = min(listener.positions[channel] for listener in listeners)
    async for page in broker.backlog(channel, oldest, until):
        for listener in listeners:
            if not listener.replaying:  # a replaying listener checks its own backlog for gaps
                _offer_gap_if_trimmed(listener, channel, page[0])
        for event in page:
            if record is not None:
                record(event)
            for listener in listeners:
                listener.offer(event)


def _accept(backlog: Backlog, subscriber: Subscriber, channel: str, events: list[Event]) -> None:
    """Queue backlog events for the subscriber: as one span joined for every stream that sends the same, if it can."""
    if events and backlog.joined is not None and subscriber.sends_frames_as_they_are:
        subscriber.accept_span(events, backlog.joined.join(channel, events))
    else:
        subscriber.accept(events)


def _offer_gap_if_trimmed(subscriber: Subscriber, channel: str, first: Event) -> None:
    position = subscriber.positions[channel]
    if (first_available := trimmed_after(position, first)) is not None:
        subscriber.offer_gap(channel, position, first_available)
