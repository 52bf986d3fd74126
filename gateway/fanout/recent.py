"""The most recent events of each channel with local subscribers, kept in memory so that a resume is served with no
Redis command (see gateway.fanout.replay).

A ring holds the events of one channel in id order and claims one span: every buffered event with an id after its
``floor`` and up to its newest is in it. The claim rests on the ids, not on how the events came: each event names the
id buffered before it, and an event is added only if that is the newest id the ring holds. Anything else (a message
missed by Pub/Sub, a reconnect, a failover) breaks the chain, and the ring starts again from that event. While the
channel is being caught up from Redis the ring serves nothing, since the catch-up may still be filling a hole.

What the ring gives is also what Redis gives: it keeps no more events than the buffer's length, none older than its
age limit, and none once the buffer itself would have expired, so a cursor the buffer has trimmed past is not served
here and meets the same ``gap`` from Redis. Every event after the newest one the ring holds comes live (or by a
catch-up, for a subscriber attached when it starts), so a subscriber served from the ring then goes live safely.

The rings are bounded per channel and in total, in events and in bytes; past the total, the rings of the channels
that have been quiet the longest give up their oldest events first.
"""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from dataclasses import dataclass

from gateway.config import Settings
from gateway.cursor import StreamId
from gateway.events import Event

# A buffer is served from memory only while it is at least this far from expiring in Redis: the ids' clock and ours
# may differ a little.
EXPIRY_MARGIN_MS = 5000


@dataclass(frozen=True)
class Limits:
    events: int  # per channel; 0 turns the rings off
    bytes: int  # per channel
    total_events: int
    total_bytes: int
    max_age_ms: int  # the buffer's age limit (0: none)
    expiry_ms: int  # how long a quiet buffer lives in Redis (0: for ever)


def recent_limits(settings: Settings) -> Limits:
    """The rings' bounds for ``settings``: never more, nor older, than the buffer in Redis keeps (see publish.lua)."""
    max_age_ms = int(settings.buffer_max_age * 1000)
    events = settings.recent_events
    if settings.buffer_maxlen:
        events = min(events, settings.buffer_maxlen)
    return Limits(
        events=events,
        bytes=settings.recent_bytes,
        total_events=settings.recent_total_events,
        total_bytes=settings.recent_total_bytes,
        max_age_ms=max_age_ms,
        expiry_ms=max_age_ms + 1000 if max_age_ms else int(settings.buffer_idle_ttl * 1000),
    )


class Ring:
    __slots__ = ("events", "floor", "size", "catching_up")

    def __init__(self) -> None:
        self.events: deque[Event] = deque()
        self.floor: StreamId | None = None  # the span claimed is (floor, newest]; None while empty
        self.size = 0
        self.catching_up = 0  # catch-ups in progress

    @property
    def newest(self) -> StreamId | None:
        return self.events[-1].stream_id if self.events else None

    def serves(self, cursor: StreamId) -> bool:
        return not self.catching_up and self.floor is not None and self.floor <= cursor <= self.events[-1].stream_id


class RecentEvents:
    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.enabled = limits.events > 0
        self._rings: OrderedDict[str, Ring] = OrderedDict()  # least recently added to first
        self.events = 0
        self.bytes = 0

    # -- kept by the hub ------------------------------------------------------------------------------------------

    def keep(self, channel: str) -> None:
        """Start a ring for a channel that has local subscribers now (it fills from the next live event)."""
        if self.enabled and channel not in self._rings:
            self._rings[channel] = Ring()
            self._rings.move_to_end(channel, last=False)  # empty: nothing to give up, so no place in the queue

    def forget(self, channel: str) -> None:
        """Drop the ring of a channel that no longer has local subscribers."""
        ring = self._rings.pop(channel, None)
        if ring is not None:
            self._clear(ring)

    def restart(self, channel: str) -> None:
        """Empty the channel's ring: what it held can no longer be vouched for. It fills again from the next event."""
        ring = self._rings.get(channel)
        if ring is not None:
            self._clear(ring)

    def add(self, event: Event) -> None:
        """A live or caught-up event of a channel, in the order the channel's events reach subscribers."""
        ring = self._rings.get(event.channel)
        stream_id = event.stream_id
        if ring is None or stream_id is None:
            return  # no local subscribers, or a plain PUBLISH that is not in the buffer
        if ring.events:
            newest = ring.events[-1].stream_id
            assert newest is not None
            if stream_id <= newest:
                return  # already held (a catch-up re-reads what came live)
            if event.previous != newest:
                self._clear(ring)  # something came between: the span restarts with this event
        if not ring.events:
            # Before this event, only the id it names is known; without one, the span starts at the event itself.
            ring.floor = event.previous if event.previous is not None else stream_id
        ring.events.append(event)
        ring.size += len(event.frame)
        self.events += 1
        self.bytes += len(event.frame)
        self._rings.move_to_end(event.channel)
        self._trim(ring, stream_id)

    def catching_up(self, channel: str, started: bool) -> None:
        """A catch-up of the channel from Redis starts or ends: meanwhile its ring serves nothing."""
        ring = self._rings.get(channel)
        if ring is not None:
            ring.catching_up += 1 if started else -1

    # -- read by resuming streams ---------------------------------------------------------------------------------

    def since(self, channel: str, cursor: StreamId) -> list[Event] | None:
        """The events after ``cursor``, oldest first, if the ring can vouch for all of them; else None (ask Redis)."""
        ring = self._trusted(channel)
        if ring is None or not ring.serves(cursor):
            return None
        newer = []
        for event in reversed(ring.events):  # cursors are mostly near the newest: walk from that end
            assert event.stream_id is not None
            if event.stream_id <= cursor:
                break
            newer.append(event)
        newer.reverse()
        return newer

    def newest(self, channel: str) -> StreamId | None:
        """The newest id of the channel, as far as the ring knows, for a stream that starts without a cursor."""
        ring = self._trusted(channel)
        return None if ring is None or ring.catching_up else ring.newest

    def held(self, channel: str) -> int:
        ring = self._rings.get(channel)
        return 0 if ring is None else len(ring.events)

    # -- internals --------------------------------------------------------------------------------------------------

    def _trusted(self, channel: str) -> Ring | None:
        ring = self._rings.get(channel)
        if ring is None or not ring.events:
            return None
        expiry = self.limits.expiry_ms
        if expiry:
            newest = ring.events[-1].stream_id
            assert newest is not None
            if time.time() * 1000 - newest[0] > expiry - EXPIRY_MARGIN_MS:
                return None  # Redis may have dropped the whole buffer by now, and would answer with a gap
        return ring

    def _trim(self, ring: Ring, newest: StreamId) -> None:
        limits = self.limits
        events = ring.events
        # The age limit as the publish script applies it: relative to the newest entry's time.
        oldest_kept = newest[0] - limits.max_age_ms if limits.max_age_ms else None
        while len(events) > 1 and (
            len(events) > limits.events
            or ring.size > limits.bytes
            or (oldest_kept is not None and events[0].stream_id[0] < oldest_kept)  # type: ignore[index]
        ):
            self._drop_oldest(ring)
        if self.events > limits.total_events or self.bytes > limits.total_bytes:
            for other in list(self._rings.values()):
                while other.events and (self.events > limits.total_events or self.bytes > limits.total_bytes):
                    self._drop_oldest(other)
                if self.events <= limits.total_events and self.bytes <= limits.total_bytes:
                    break

    def _drop_oldest(self, ring: Ring) -> None:
        event = ring.events.popleft()
        ring.floor = event.stream_id  # the span shrinks from below: the next event names this one as its previous
        ring.size -= len(event.frame)
        self.events -= 1
        self.bytes -= len(event.frame)
        if not ring.events:
            ring.floor = None

    def _clear(self, ring: Ring) -> None:
        self.events -= len(ring.events)
        self.bytes -= ring.size
        ring.events.clear()
        ring.size = 0
        ring.floor = None
