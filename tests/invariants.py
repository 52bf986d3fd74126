"""The gateway's delivery promise, checked from the outside.

    every event whose publish was acknowledged reaches every subscriber exactly once and in order, for each
    channel, as long as the subscriber's absence fits within the buffer. Where it does not fit, the subscriber
    gets one gap event.

A ``Checker`` records every publish attempt (acknowledged: a ``201``, or a script publish that returned an id; or
not) and, per subscriber, everything it received in order, gap events included, with the ``id:`` each connection
opened with. ``check()`` then judges each subscriber and channel:

- lost: an acknowledged id after the subscriber's start position that it never received and no gap covers;
- duplicated: an id received twice, one at or below the start position, or a second copy of an acknowledged event
  stored under another id;
- reordered: an id below one received before it on the channel, or below a gap's ``first_available``;
- a gap must start at the subscriber's position on that channel, cover at least one missing event, be followed by
  its ``first_available``, and skip no id that Redis still buffers at the end (trimming only ever removes);
- an event that was not acknowledged (a ``503`` whose publish Redis still stored) may arrive: it is counted, never
  an error, and never lost. It may also explain a gap that covers no acknowledged event, but only a gap it could
  lie in: its id, when any subscriber received it, is exact; otherwise it is above the newest id acknowledged before
  the attempt began (``after``, when the caller knows it), so a gap that ends at or below that bound is not its;
- a resumed stream must open at the Last-Event-ID it was given, and a multi-channel cursor must hold, for every other
  channel, the last id received on it.

The composite cursors of multi-channel streams are decoded here, independently of the gateway's own code, so a bug
there cannot hide itself.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from dataclasses import dataclass, field, fields

StreamId = tuple[int, int]
ZERO: StreamId = (0, 0)
MAX_PROBLEMS = 40


def parse_id(text: str) -> StreamId:
    ms, _, seq = text.partition("-")
    return int(ms), int(seq)


def format_id(stream_id: StreamId) -> str:
    return f"{stream_id[0]}-{stream_id[1]}"


def decode_cursor(cursor: str, channels: tuple[str, ...]) -> dict[str, str]:
    """The per-channel stream ids of a multi-channel ``id:`` (``tag_pos.pos``, base 36, ``~seq`` when not 0)."""
    _, sep, body = cursor.partition("_")
    parts = body.split(".")
    if not sep or len(parts) != len(channels):
        raise ValueError(f"not a cursor for {len(channels)} channels: {cursor!r}")
    positions = {}
    for channel, part in zip(channels, parts, strict=True):
        ms, _, seq = part.partition("~")
        positions[channel] = format_id((int(ms, 36), int(seq or "0", 36)))
    return positions


@dataclass(frozen=True, slots=True)
class Received:
    """One event as a subscriber got it. Gaps have no id, ``event="gap"`` and their JSON as data."""

    channel: str
    id: str | None
    event: str
    data: str
    cursor: str | None = None  # the composite id a multi-channel event came with


@dataclass(slots=True)
class Connection:
    sent: str | None  # the Last-Event-ID it was opened with
    opening: str | None = None  # the id of the opening frame, when it had one
    opened_cleanly: bool = True  # the body started with the ": connected" opening
    end: str | None = None  # "end" (the server ended the body), "error: ...", or "status NNN"
    ended_with_retry: bool = False  # the body's last frame was a retry: line


class SubscriberLog:
    """What one subscriber (one browser tab, say) saw, across all its connections."""

    def __init__(self, name: str, channels: tuple[str, ...]) -> None:
        self.name = name
        self.channels = tuple(sorted(set(channels)))
        self.multi = len(self.channels) > 1
        self.received: list[Received] = []
        self.connections: list[Connection] = []
        self.start: dict[str, StreamId] | None = None
        # The newest id received per channel (or the start): enough to tell when it has caught up.
        self.positions: dict[str, StreamId] = {}
        self.problems: list[str] = []

    def connecting(self, sent: str | None) -> Connection:
        connection = Connection(sent)
        self.connections.append(connection)
        return connection

    def opened(self, connection: Connection, opening: str | None, *, cleanly: bool = True) -> None:
        connection.opening, connection.opened_cleanly = opening, cleanly
        if opening is None or self.start is not None:
            return
        try:
            positions = decode_cursor(opening, self.channels) if self.multi else {self.channels[0]: opening}
            self.start = {channel: parse_id(text) for channel, text in positions.items()}
        except ValueError as exc:
            self.problems.append(f"{self.name}: opening id does not parse: {exc}")
            return
        self.positions = dict(self.start)

    def take(self, event: str, event_id: str, data: str) -> None:
        """Record a dispatched event as the SSE parser reports it (``event_id`` is the last id after it)."""
        if event == "gap":
            try:
                channel = json.loads(data)["channel"]
            except (ValueError, KeyError, TypeError):
                channel = "?"
            self.received.append(Received(channel, None, "gap", data))
            return
        if self.multi:
            channel, _, kind = event.partition(":")
            try:
                stream_id = decode_cursor(event_id, self.channels).get(channel)
            except ValueError as exc:
                self.problems.append(f"{self.name}: event {event!r} with a bad cursor: {exc}")
                return
            if stream_id is None:
                self.problems.append(f"{self.name}: event named {event!r}, not one of its channels")
                return
            received = Received(channel, stream_id, kind or "message", data, event_id)
        else:
            received = Received(self.channels[0], event_id, event, data)
        self.received.append(received)
        try:
            new = parse_id(received.id or "")
        except ValueError:
            self.problems.append(f"{self.name}: event with id {received.id!r}")
            return
        if new > self.positions.get(received.channel, ZERO):
            self.positions[received.channel] = new

    def ended(self, connection: Connection, how: str, *, with_retry: bool = False) -> None:
        connection.end, connection.ended_with_retry = how, with_retry

    def gaps(self, channel: str | None = None) -> list[dict[str, str]]:
        return [json.loads(r.data) for r in self.received if r.event == "gap" and channel in (None, r.channel)]


@dataclass
class Report:
    published: int = 0  # acknowledged publishes
    unacknowledged: int = 0  # publish attempts that were not acknowledged
    delivered: int = 0  # acknowledged events received, summed over subscribers
    lost: int = 0
    duplicated: int = 0
    reordered: int = 0
    gaps: int = 0
    gapped: int = 0  # acknowledged events a gap told a subscriber it missed
    bad_gaps: int = 0  # a gap at the wrong position, or one that covers nothing
    unexpected: int = 0  # an id nobody tried to publish
    mismatched: int = 0  # an id whose data or type differs from what was published under it
    bad_cursors: int = 0  # a multi-channel cursor that disagrees with what was received, or a resume not honoured
    bad_streams: int = 0  # a stream answered with a status other than 200, or without its opening
    unacked_delivered: int = 0  # deliveries of unacknowledged publishes that Redis stored anyway (allowed)
    subscribers: int = 0
    connections: int = 0
    problems: list[str] = field(default_factory=list)

    COUNTS = ("published", "unacknowledged", "delivered", "lost", "duplicated", "reordered", "gaps")
    ERRORS = ("lost", "duplicated", "reordered", "bad_gaps", "unexpected", "mismatched", "bad_cursors", "bad_streams")

    @property
    def ok(self) -> bool:
        return all(getattr(self, name) == 0 for name in self.ERRORS)

    def counts(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "problems"}

    def __add__(self, other: Report) -> Report:
        total = Report(**{name: value + getattr(other, name) for name, value in self.counts().items()})
        total.problems = (self.problems + other.problems)[:MAX_PROBLEMS]
        return total

    def summary(self) -> str:
        counts = " ".join(f"{name}={value}" for name, value in self.counts().items())
        return counts + "".join(f"\n  {problem}" for problem in self.problems)


class Checker:
    def __init__(self) -> None:
        self.acked: dict[str, dict[StreamId, tuple[str, str]]] = {}  # channel -> id -> (event type, data)
        self._acked_ids_by_data: dict[str, dict[str, StreamId]] = {}
        self._last_acked: dict[str, StreamId] = {}
        self.unacked: dict[str, dict[str, str]] = {}  # channel -> data -> event type
        # channel -> data -> the newest id acknowledged before the attempt began: the attempt's id, if Redis stored
        # it, is above it (publish ids only grow).
        self._unacked_after: dict[str, dict[str, StreamId]] = {}
        # channel -> data -> the id a subscriber received it under, once check() has looked.
        self._unacked_at: dict[str, dict[str, StreamId]] = {}
        self.unacked_reasons: Counter[str] = Counter()
        self.logs: list[SubscriberLog] = []
        self._buffered: dict[str, set[StreamId]] = {}

    # -- recording -------------------------------------------------------------------------------------------

    def acknowledged(self, channel: str, event_id: str, data: str, event: str | None = None) -> None:
        stream_id = parse_id(event_id)
        self.acked.setdefault(channel, {})[stream_id] = (event or "message", data)
        self._acked_ids_by_data.setdefault(channel, {})[data] = stream_id
        self._last_acked[channel] = max(stream_id, self._last_acked.get(channel, ZERO))

    def unacknowledged(
        self, channel: str, data: str, reason: str, event: str | None = None, *, after: str | None = None
    ) -> None:
        """A publish attempt that was not acknowledged. ``after``: ``newest_acknowledged(channel)`` taken before the
        attempt began; without it the attempt may lie anywhere above the start of the channel."""
        self.unacked.setdefault(channel, {})[data] = event or "message"
        self._unacked_after.setdefault(channel, {})[data] = parse_id(after) if after else ZERO
        self.unacked_reasons[reason] += 1

    def newest_acknowledged(self, channel: str) -> str | None:
        """The newest id acknowledged on ``channel`` so far: what to pass as ``after`` for an attempt about to begin."""
        newest = self._last_acked.get(channel)
        return format_id(newest) if newest is not None else None

    def subscriber(self, channels: tuple[str, ...] | list[str], name: str | None = None) -> SubscriberLog:
        log = SubscriberLog(name or f"subscriber-{len(self.logs)}", tuple(channels))
        self.logs.append(log)
        return log

    # -- waiting ---------------------------------------------------------------------------------------------

    def behind(self, logs: list[SubscriberLog] | None = None) -> list[SubscriberLog]:
        """Subscribers that have not yet received up to the newest acknowledged id of each of their channels."""
        late = []
        for log in self.logs if logs is None else logs:
            if log.start is None or any(
                log.positions.get(channel, ZERO) < self._last_acked.get(channel, ZERO) for channel in log.channels
            ):
                late.append(log)
        return late

    async def wait_settled(self, timeout: float, logs: list[SubscriberLog] | None = None) -> bool:
        """Wait (bounded) until every subscriber, or those of ``logs``, has caught up; False on timeout."""
        deadline = time.monotonic() + timeout
        while self.behind(logs):
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.1)
        return True

    # -- judging ---------------------------------------------------------------------------------------------

    def check(self, buffered: dict[str, list[str]] | None = None) -> Report:
        """Judge every subscriber. ``buffered``: each channel's ids still in Redis now, if known.

        Trimming only ever removes, so an id still buffered at the end was buffered when any gap skipped it: a gap
        that skips such an id said more was lost than was.
        """
        self._buffered = {channel: {parse_id(i) for i in ids} for channel, ids in (buffered or {}).items()}
        self._unacked_at = self._unacked_positions()
        report = Report(published=sum(len(ids) for ids in self.acked.values()))
        report.unacknowledged = sum(self.unacked_reasons.values())
        report.subscribers = len(self.logs)
        problems: list[str] = []
        for log in self.logs:
            problems += log.problems
            report.bad_cursors += len(log.problems)
            report.connections += len(log.connections)
            self._check_connections(log, report, problems)
            if log.start is None:
                report.bad_streams += 1
                problems.append(f"{log.name}: never opened a stream with a starting id")
                continue
            self._check_subscriber(log, report, problems)
        report.problems = problems[:MAX_PROBLEMS]
        return report

    @staticmethod
    def _check_connections(log: SubscriberLog, report: Report, problems: list[str]) -> None:
        for number, connection in enumerate(log.connections):
            if connection.end is not None and connection.end.startswith("status"):
                report.bad_streams += 1
                problems.append(f"{log.name}: connection {number} answered {connection.end}")
            elif not connection.opened_cleanly:
                report.bad_streams += 1
                problems.append(f"{log.name}: connection {number} did not start with the opening frame")
            elif connection.sent and connection.opening is not None and connection.opening != connection.sent:
                report.bad_cursors += 1
                problems.append(
                    f"{log.name}: resumed with {connection.sent} but the stream opened at {connection.opening}"
                )

    def _check_subscriber(self, log: SubscriberLog, report: Report, problems: list[str]) -> None:
        assert log.start is not None
        state = {channel: _Channel(position) for channel, position in log.start.items()}
        for item in log.received:
            if item.event == "gap" and item.id is None:
                report.gaps += 1
                self._check_gap(log, item, state, report, problems)
                continue
            channel, stream_id = item.channel, parse_id(item.id or "0-0")
            here = state[channel]
            if here.after_gap is not None and stream_id != here.after_gap[1]:
                report.bad_gaps += 1
                problems.append(f"{log.name}: {channel} {item.id} came first after a gap to {here.after_gap[1]}")
            here.after_gap = None
            if stream_id in here.seen or stream_id <= log.start[channel]:
                report.duplicated += 1
                problems.append(
                    f"{log.name}: {channel} {item.id} received again (start {format_id(log.start[channel])})"
                )
                continue
            if stream_id < here.newest or stream_id < here.floor:
                report.reordered += 1
                problems.append(f"{log.name}: {channel} {item.id} after {format_id(here.newest)}")
            here.seen.add(stream_id)
            here.newest = max(here.newest, stream_id)
            here.last = stream_id
            if item.cursor is not None:
                for other, text in decode_cursor(item.cursor, log.channels).items():
                    if other != channel and parse_id(text) != state[other].last:
                        report.bad_cursors += 1
                        problems.append(
                            f"{log.name}: cursor {item.cursor} says {other} {text}, not {state[other].last}"
                        )
            self._check_identity(log, channel, stream_id, item, report, problems)
        for channel, here in state.items():
            buffered = self._buffered.get(channel, set())
            for stream_id in sorted(self.acked.get(channel, {})):
                if stream_id <= log.start[channel] or stream_id in here.seen:
                    continue
                if not any(low < stream_id < high for low, high in here.covered):
                    report.lost += 1
                    problems.append(f"{log.name}: {channel} {format_id(stream_id)} lost")
                elif stream_id in buffered:
                    report.bad_gaps += 1
                    problems.append(f"{log.name}: a gap skipped {channel} {format_id(stream_id)}, still buffered")
                else:
                    report.gapped += 1

    def _check_gap(self, log, item, state, report, problems) -> None:
        try:
            gap = json.loads(item.data)
            channel, requested, first = gap["channel"], parse_id(gap["requested"]), parse_id(gap["first_available"])
        except (ValueError, KeyError, TypeError):
            report.bad_gaps += 1
            problems.append(f"{log.name}: gap event with data {item.data!r}")
            return
        if channel not in state:
            report.bad_gaps += 1
            problems.append(f"{log.name}: gap for a channel it did not ask for: {item.data}")
            return
        here = state[channel]
        if requested != here.last or first <= requested:
            report.bad_gaps += 1
            problems.append(f"{log.name}: gap {item.data} but its position on {channel} is {format_id(here.last)}")
        covers_acked = any(requested < stream_id < first for stream_id in self.acked.get(channel, {}))
        if not covers_acked and not self._unacked_may_lie_in(channel, requested, first):
            report.bad_gaps += 1
            problems.append(f"{log.name}: gap {item.data} but no published event is missing")
        # The next event of the channel must be first_available (or, after a drop, the same gap comes again).
        here.after_gap = (requested, first)
        here.covered.append((requested, first))
        here.floor = max(here.floor, first)

    def _unacked_positions(self) -> dict[str, dict[str, StreamId]]:
        """Where the unacknowledged publishes that some subscriber received were stored."""
        found: dict[str, dict[str, StreamId]] = {}
        for log in self.logs:
            for item in log.received:
                if item.event == "gap" or item.data not in self.unacked.get(item.channel, {}):
                    continue
                try:
                    stream_id = parse_id(item.id or "")
                except ValueError:
                    continue
                if stream_id not in self.acked.get(item.channel, {}):
                    found.setdefault(item.channel, {})[item.data] = stream_id
        return found

    def _unacked_may_lie_in(self, channel: str, requested: StreamId, first: StreamId) -> bool:
        """Whether an unacknowledged publish on ``channel`` could have been stored between the gap's ends."""
        seen_at = self._unacked_at.get(channel, {})
        for data, after in self._unacked_after.get(channel, {}).items():
            at = seen_at.get(data)
            if at is not None:
                if requested < at < first:
                    return True
            else:  # somewhere above ``after``: an id between the gap's ends must be free for it
                low = max(after, requested)
                if (low[0], low[1] + 1) < first:
                    return True
        return False

    def _check_identity(self, log, channel, stream_id, item, report, problems) -> None:
        published = self.acked.get(channel, {}).get(stream_id)
        if published is not None:
            report.delivered += 1
            if published != (item.event, item.data):
                report.mismatched += 1
                problems.append(f"{log.name}: {channel} {item.id} is {item.event}/{item.data[:40]!r}, not {published}")
            return
        if self.unacked.get(channel, {}).get(item.data) == item.event:
            report.unacked_delivered += 1
            return
        copy_of = self._acked_ids_by_data.get(channel, {}).get(item.data)
        if copy_of is not None:
            report.duplicated += 1
            problems.append(f"{log.name}: {channel} {item.id} repeats acknowledged {format_id(copy_of)}")
            return
        report.unexpected += 1
        problems.append(f"{log.name}: {channel} {item.id} {item.data[:40]!r} was never published")


@dataclass
class _Channel:
    """One subscriber's progress on one channel, while its record is judged."""

    last: StreamId  # what its Last-Event-ID says
    newest: StreamId = ZERO
    floor: StreamId = ZERO  # after a gap, nothing below its first_available may come
    seen: set[StreamId] = field(default_factory=set)
    covered: list[tuple[StreamId, StreamId]] = field(default_factory=list)  # (requested, first_available) of gaps
    after_gap: tuple[StreamId, StreamId] | None = None

    def __post_init__(self) -> None:
        self.newest = self.last
