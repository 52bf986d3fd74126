"""One client connection's side of the fan-out: its cursor, a bounded buffer of frames, and eviction.

The hub calls ``offer`` for every event of the client's channels. ``offer`` never waits: it appends the frame to the
buffer and, once the stream is live, marks the subscriber due for the flusher, which writes the buffer in one go
(see gateway.fanout.flusher). A client whose buffer passes its bounds is closed (it resumes later with Last-Event-ID)
rather than allowed to slow anyone else down.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Iterable, Sequence

from gateway.cursor import ZERO, StreamId, channel_set_tag, format_cursor, format_position, format_stream_id
from gateway.events import Event
from gateway.fanout.writer import Pending, Writer
from gateway.metrics import GAP_EVENTS, WRITES_WAITED
from gateway.sse import encode_comment, encode_event

HEARTBEAT = encode_comment("keepalive")


class Subscriber:
    # Thousands of these live at once: slots keep each one small.
    __slots__ = (
        "channels", "multi", "positions", "expires_at", "close_reason", "gaps_sent", "oldest_arrival",
        "writer", "writing", "writer_cancelled", "write_started", "last_write",
        "_heartbeat", "_send_timeout", "_conflate", "_slots", "_tag", "_encoded", "_max_events", "_max_bytes",
        "_frames", "_count", "_size", "_held", "_held_size", "_waiter", "_close_waiters", "heartbeats",
        "_writer", "_schedule", "_due", "blocked",
    )  # fmt: skip

    def __init__(
        self,
        channels: Sequence[str],
        *,
        max_events: int,
        max_bytes: int,
        conflate: Iterable[str] = (),
        heartbeat: float = 15.0,
        send_timeout: float = 30.0,
        expires_at: float | None = None,
    ) -> None:
        self.channels = tuple(channels)
        self._heartbeat = heartbeat
        self._send_timeout = send_timeout
        self.expires_at = expires_at  # wall-clock second at which the client's token runs out
        # Channels whose queued, unsent event is replaced by a newer one: state feeds, where only the latest counts.
        self._conflate = tuple(conflate)  # a few names at most; an empty tuple costs nothing
        self._slots: dict[str, int] = {}  # conflated channel -> index of its queued frame
        self.multi = len(self.channels) > 1
        # The id of the last event queued for this client, per channel: anything at or below it is a duplicate.
        self.positions: dict[str, StreamId] = {}
        self._tag = channel_set_tag(self.channels) if self.multi else ""
        self._encoded: dict[str, str] = {}
        self._max_events = max_events
        self._max_bytes = max_bytes
        self._frames: list[bytes] = []
        self._count = 0  # frames queued; replaced conflated frames leave empty entries behind
        self._size = 0
        # When the oldest queued event arrived from Redis, for the fan-out lag metric; None for backlog frames.
        self.oldest_arrival: float | None = None
        self.gaps_sent = 0
        self.heartbeats = 0  # of the queued frames, how many are heartbeats
        # While the backlog is being read, live events wait here; see gateway.fanout.replay.
        self._held: list[Event] | None = []
        self._held_size = 0
        # The writer's pending wait, if it is waiting: a bare future is cheaper to wake than an asyncio.Event.
        self._waiter: asyncio.Future[None] | None = None
        self.close_reason: str | None = None
        self._close_waiters: list[asyncio.Future[None]] | None = None
        # The task writing to the client, set while the response runs: eviction cancels it if it is stuck.
        self.writer: asyncio.Task[None] | None = None
        self.writing = False
        self.writer_cancelled = False
        self.write_started = self.last_write = time.monotonic()
        # Set once the stream is live: how its bytes reach the client, and the flusher that writes them (go_direct).
        self._writer: Writer | None = None
        self._schedule: Callable[[Subscriber], None] | None = None
        self._due = False  # in the flusher's queue
        self.blocked: Pending | None = None  # a write the flusher started that the client's own task must finish

    # -- called by the hub; never awaits ------------------------------------------------------------------------

    def offer(self, event: Event) -> None:
        if self.close_reason is not None:
            return
        if self._held is not None:
            stream_id = event.stream_id
            if stream_id is not None and stream_id <= self.positions.get(event.channel, ZERO):
                return  # already behind the cursor (a catch-up read re-offers such events)
            self._held.append(event)
            self._held_size += len(event.frame)
            if len(self._held) > self._max_events or self._held_size > self._max_bytes:
                self.close("overflow")
            return
        self._queue(event)

    def offer_gap(self, channel: str, requested: StreamId, first_available: StreamId) -> None:
        if self.close_reason is None:
            self.gaps_sent += 1
            GAP_EVENTS.inc()
            self._push(gap_frame(channel, requested, first_available))

    def close(self, reason: str) -> None:
        if self.close_reason is None:
            self.close_reason = reason
            self._frames.clear()
            self._slots.clear()
            self._count = self._size = 0
            self.oldest_arrival = None
            self._held = None if self._held is None else []
            self._wake()
            for waiter in self._close_waiters or ():
                if not waiter.done():
                    waiter.set_result(None)
            if self.writing and self.writer is not None:
                # Blocked writing to a client that does not read: waiting on it would hold up the close.
                self.writer_cancelled = True
                self.writer.cancel()

    def tick(self, now: float, wall: float) -> None:
        """The hub's periodic look, instead of a timer per client: a stalled write, expiry, a due heartbeat."""
        if self.writing:
            if now - self.write_started > self._send_timeout:
                # It accepted nothing for send_timeout (also true of a closed stream's last words): give up on it.
                if self.close_reason is None:
                    self.close("stalled")
                elif self.writer is not None and not self.writer_cancelled:
                    self.writer_cancelled = True
                    self.writer.cancel()
            return
        if self.close_reason is not None:
            return
        if self.expires_at is not None and wall >= self.expires_at:
            self.close("auth_expired")
        elif not self._count and now - self.last_write >= self._heartbeat:
            self._push(HEARTBEAT, bounded=False)
            self.heartbeats += 1

    async def until_closed(self) -> None:
        """Return once the subscriber is closed: for code that must stop waiting on Redis then."""
        if self.close_reason is not None:
            return
        # Futures made only while someone waits: an asyncio.Event kept for the stream's life costs about 1 KiB.
        waiter = asyncio.get_running_loop().create_future()
        self._close_waiters = waiters = self._close_waiters or []
        waiters.append(waiter)
        try:
            await waiter
        finally:
            waiters.remove(waiter)
            if not waiters and self._close_waiters is waiters:
                self._close_waiters = None

    # -- called by the client's own task ------------------------------------------------------------------------

    def start_at(self, positions: dict[str, StreamId]) -> None:
        self.positions = dict(positions)
        if self.multi:
            self._encoded = {channel: format_position(position) for channel, position in self.positions.items()}

    def accept(self, events: list[Event]) -> None:
        """Queue backlog events (from the replay buffer), dropping any at or below the cursor."""
        for event in events:
            self._queue(event, bounded=False)
        self.oldest_arrival = None  # read from the buffer, not live: no fan-out lag to speak of

    @property
    def sends_frames_as_they_are(self) -> bool:
        """One channel and no conflation: its backlog goes out as the events' own frames, in order (see accept_span)."""
        return not self.multi and not self._conflate

    def accept_span(self, events: list[Event], joined: bytes) -> None:
        """Queue backlog events, all after the cursor, whose frames are already joined (gateway.fanout.joined)."""
        last = events[-1].stream_id
        assert last is not None and self.sends_frames_as_they_are
        self.positions[self.channels[0]] = last
        self._push(joined, bounded=False, frames=len(events))
        self.oldest_arrival = None

    def go_live(self) -> None:
        """End the replay: queue the live events held meanwhile, dropping those the backlog already covered."""
        held, self._held, self._held_size = self._held or [], None, 0
        for event in held:
            self._queue(event)

    @property
    def replaying(self) -> bool:
        return self._held is not None

    @property
    def queued(self) -> int:
        """Frames waiting to be written, heartbeats included."""
        return self._count

    def take(self) -> bytes:
        """Everything queued, as one write."""
        frames, self._frames, self._size, self._count = self._frames, [], 0, 0
        self.heartbeats = 0
        if self._slots:
            self._slots.clear()
        self.oldest_arrival = None
        return frames[0] if len(frames) == 1 else b"".join(frames)

    def go_direct(self, writer: Writer, schedule: Callable[[Subscriber], None]) -> None:
        """Hand the writing of queued frames to the flusher: ``schedule`` queues this subscriber for it."""
        self._writer, self._schedule = writer, schedule
        if self._count:
            self._mark_due()

    def write_now(self, now: float) -> int:
        """Called by the flusher: write everything queued, without waiting. Returns how many events it carried."""
        self._due = False
        if self.close_reason is not None or self.blocked is not None or not self._count or self._writer is None:
            return 0
        events = self._count - self.heartbeats
        pending = self._writer.write(self.take())
        if pending is None:
            self.last_write = now
        else:
            # The client's own task finishes this write, and the tick watches how long it takes.
            self.blocked = pending
            if pending.socket_full:  # a plain write is not under way until the client's task starts it
                self.writing, self.write_started = True, now
                WRITES_WAITED.inc()
            self._wake()
        return events

    async def finish_write(self) -> None:
        """In the client's task: finish the write that had to wait, then give the queue back to the flusher."""
        blocked = self.blocked
        if blocked is None:
            return
        if not self.writing:
            self.writing, self.write_started = True, time.monotonic()
        try:
            await blocked.finish()
        finally:
            self.blocked = None
            self.writing, self.last_write = False, time.monotonic()
        if self._count:
            self._mark_due()

    def drop_blocked(self) -> None:
        """Abandon a write that had to wait, as the response ends without it (the client is being cut off)."""
        if self.blocked is not None:
            self.blocked.drop()
            self.blocked = None

    def wait(self) -> asyncio.Future[None]:
        """Done once a write needs the client's own task (see write_now) or the subscriber is closed.

        A future rather than a coroutine: the stream waits on it for hours, and a coroutine's frame would stay too.
        """
        waiter = asyncio.get_running_loop().create_future()
        if self.blocked is not None or self.close_reason is not None:
            waiter.set_result(None)
        else:
            self._waiter = waiter
        return waiter

    @property
    def last_event_id(self) -> str:
        if self.multi:
            return format_cursor(self._tag, [self._encoded[c] for c in self.channels])
        return format_stream_id(self.positions[self.channels[0]])

    # -- internals --------------------------------------------------------------------------------------------

    def _queue(self, event: Event, *, bounded: bool = True) -> None:
        # Runs once per client per event: the common case (one channel, no conflation) takes the fewest steps.
        if self.oldest_arrival is None:
            self.oldest_arrival = event.arrived
        stream_id = event.stream_id
        channel = event.channel
        if stream_id is None:  # a plain PUBLISH, or a bare channel's message: not in the buffer, nothing to deduplicate
            # Conflated like any other: replacing a frame with an id only leaves the client's resume point behind,
            # and a resume from there replays what it never got.
            frame = event.multi_body if self.multi else event.frame
        elif stream_id <= self.positions[channel]:
            return
        else:
            self.positions[channel] = stream_id
            if self.multi:
                self._encoded[channel] = format_position(stream_id)
                frame = b"id: " + self.last_event_id.encode() + b"\n" + event.multi_body
            else:
                frame = event.frame
        if not self._conflate or channel not in self._conflate:
            self._push(frame, bounded)
            return
        self._replace_queued(channel)
        self._push(frame, bounded)
        if self.close_reason is None:
            self._slots[channel] = len(self._frames) - 1

    def _wake(self) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _replace_queued(self, channel: str) -> None:
        """Drop the channel's unsent frame; the newer one goes to the end, so ids still only grow on the wire."""
        index = self._slots.pop(channel, None)
        if index is None:
            return
        self._size -= len(self._frames[index])
        self._frames[index] = b""
        self._count -= 1
        if len(self._frames) > 2 * self._count + 16:  # compact the empty entries away now and then
            kept = [(i, frame) for i, frame in enumerate(self._frames) if frame]
            where = {old: new for new, (old, _) in enumerate(kept)}
            self._frames = [frame for _, frame in kept]
            self._slots = {name: where[i] for name, i in self._slots.items()}

    def _push(self, frame: bytes, bounded: bool = True, frames: int = 1) -> None:
        """Queue a frame (or ``frames`` joined). Backlog pages are written before the next is read, so only live
        frames are bounded."""
        if self.close_reason is not None:
            return
        self._frames.append(frame)
        self._count += frames
        self._size += len(frame)
        if bounded and (self._count > self._max_events or self._size > self._max_bytes):
            self.close("overflow")
            return
        if not self._due and self._schedule is not None and self.blocked is None:
            self._mark_due()

    def _mark_due(self) -> None:
        assert self._schedule is not None
        self._due = True
        self._schedule(self)


def gap_frame(channel: str, requested: StreamId, first_available: StreamId) -> bytes:
    body = {
        "channel": channel,
        "requested": format_stream_id(requested),
        "first_available": format_stream_id(first_available),
    }
    return encode_event(json.dumps(body, separators=(",", ":")), event="gap")
