"""gateway.fanout.recent: what a ring vouches for, and what it gives up, on events made as a broker makes them."""

from __future__ import annotations

import time

from gateway.config import Settings
from gateway.cursor import ZERO, StreamId
from gateway.events import Event
from gateway.fanout.recent import EXPIRY_MARGIN_MS, Limits, RecentEvents, recent_limits

NOW_MS = int(time.time() * 1000)
ROOMY = Limits(events=100, bytes=10**6, total_events=1000, total_bytes=10**7, max_age_ms=0, expiry_ms=0)


def ids(count: int, start_ms: int = NOW_MS) -> list[StreamId]:
    return [(start_ms + n, 0) for n in range(count)]


def chained(channel: str, stream_ids: list[StreamId], previous: StreamId | None = ZERO) -> list[Event]:
    """Events as the publish script writes them: each names the id before it."""
    events = []
    for stream_id in stream_ids:
        events.append(Event(channel, stream_id, None, f"d{stream_id[0]}", previous))
        previous = stream_id
    return events


def filled(events: list[Event], limits: Limits = ROOMY) -> RecentEvents:
    recent = RecentEvents(limits)
    for channel in {event.channel for event in events}:
        recent.keep(channel)
    for event in events:
        recent.add(event)
    return recent


def test_a_cursor_inside_the_span_gets_exactly_the_events_after_it() -> None:
    events = chained("a", ids(5))
    recent = filled(events)
    assert recent.since("a", events[1].stream_id) == events[2:]
    assert recent.since("a", events[-1].stream_id) == []
    assert recent.newest("a") == events[-1].stream_id


def test_the_span_starts_at_the_id_the_first_event_names() -> None:
    stream_ids = ids(6)
    events = chained("a", stream_ids[3:], previous=stream_ids[2])
    recent = filled(events)
    assert recent.since("a", stream_ids[2]) == events
    assert recent.since("a", stream_ids[1]) is None  # an older cursor: only Redis knows what came in between


def test_a_cursor_between_ids_of_the_span_is_served() -> None:
    events = chained("a", [(NOW_MS, 0), (NOW_MS + 10, 0)])
    assert filled(events).since("a", (NOW_MS + 5, 0)) == events[1:]


def test_a_cursor_newer_than_the_newest_event_is_not_served() -> None:
    events = chained("a", ids(3))
    assert filled(events).since("a", (NOW_MS + 50, 0)) is None


def test_a_missed_event_restarts_the_span_from_the_next_one() -> None:
    events = chained("a", ids(6))
    recent = filled([*events[:3], *events[4:]])  # events[3] never came
    assert recent.since("a", events[1].stream_id) is None
    assert recent.since("a", events[2].stream_id) is None
    assert recent.since("a", events[3].stream_id) == events[4:]
    assert recent.held("a") == 2


def test_an_event_that_names_no_previous_vouches_only_for_itself() -> None:
    (event,) = chained("a", ids(1), previous=None)
    recent = filled([event])
    assert recent.since("a", event.stream_id) == []
    assert recent.since("a", (NOW_MS - 1, 0)) is None


def test_an_event_already_held_is_not_added_twice() -> None:
    events = chained("a", ids(3))
    recent = filled(events)
    recent.add(events[1])  # a catch-up re-reads what came live
    assert recent.since("a", ZERO) == events
    assert recent.events == 3


def test_events_without_an_id_and_channels_without_a_ring_are_not_kept() -> None:
    recent = RecentEvents(ROOMY)
    recent.keep("a")
    recent.add(Event("a", None, None, "plain publish"))
    recent.add(chained("b", ids(1))[0])
    assert recent.held("a") == recent.held("b") == recent.events == 0


def test_past_its_length_the_ring_gives_up_its_oldest_and_the_span_shrinks() -> None:
    events = chained("a", ids(10))
    recent = filled(events, Limits(5, 10**6, 1000, 10**7, 0, 0))
    assert recent.held("a") == 5
    assert recent.since("a", events[4].stream_id) == events[5:]
    assert recent.since("a", events[3].stream_id) is None


def test_past_its_bytes_the_ring_gives_up_its_oldest() -> None:
    events = chained("a", ids(10))
    frame = len(events[0].frame)
    recent = filled(events, Limits(100, 3 * frame, 1000, 10**7, 0, 0))
    assert recent.held("a") == 3
    assert recent.bytes == sum(len(e.frame) for e in events[7:])


def test_events_past_the_age_limit_of_the_newest_are_given_up_as_the_script_trims_them() -> None:
    events = chained("a", [(NOW_MS - 5000, 0), (NOW_MS - 1500, 0), (NOW_MS, 0)])
    recent = filled(events, Limits(100, 10**6, 1000, 10**7, 2000, 0))
    assert recent.held("a") == 2
    assert recent.since("a", events[0].stream_id) == events[1:]  # a client that has the trimmed one lacks nothing
    assert recent.since("a", ZERO) is None  # one that lacks it is sent to Redis, and its gap


def test_a_ring_whose_buffer_may_have_expired_in_redis_serves_nothing() -> None:
    expiry_ms = 60_000
    limits = Limits(100, 10**6, 1000, 10**7, 0, expiry_ms)
    now_ms = int(time.time() * 1000)  # not the module's: this test compares with the clock
    old = chained("a", ids(3, start_ms=now_ms - expiry_ms + EXPIRY_MARGIN_MS - 1000))
    recent = filled(old, limits)
    assert recent.since("a", old[0].stream_id) is None
    assert recent.newest("a") is None
    fresh = chained("b", ids(3, start_ms=now_ms - expiry_ms + EXPIRY_MARGIN_MS + 30_000))
    assert filled(fresh, limits).since("b", fresh[0].stream_id) == fresh[1:]


def test_past_the_total_the_channel_quiet_the_longest_gives_up_first() -> None:
    quiet, busy = chained("quiet", ids(4)), chained("busy", ids(6, start_ms=NOW_MS + 100))
    recent = filled([*quiet, *busy], Limits(100, 10**6, 8, 10**7, 0, 0))
    assert recent.events == 8
    assert recent.held("busy") == 6 and recent.held("quiet") == 2
    assert recent.since("quiet", quiet[1].stream_id) == quiet[2:]
    assert recent.since("quiet", quiet[0].stream_id) is None


def test_during_a_catch_up_the_ring_serves_nothing() -> None:
    events = chained("a", ids(3))
    recent = filled(events)
    recent.catching_up("a", True)
    assert recent.since("a", events[0].stream_id) is None
    assert recent.newest("a") is None
    recent.catching_up("a", False)
    assert recent.since("a", events[0].stream_id) == events[1:]


def test_restart_and_forget_leave_nothing_counted() -> None:
    events = chained("a", ids(3))
    recent = filled(events)
    recent.restart("a")
    assert recent.since("a", events[0].stream_id) is None and recent.events == recent.bytes == 0
    recent.add(chained("a", ids(4))[3])  # a restarted ring fills again from the next event
    assert recent.held("a") == 1
    recent.forget("a")
    assert recent.held("a") == recent.events == recent.bytes == 0


def test_rings_are_off_with_no_events_allowed() -> None:
    recent = filled(chained("a", ids(3)), Limits(0, 10**6, 1000, 10**7, 0, 0))
    assert not recent.enabled
    assert recent.since("a", ZERO) is None


def test_limits_never_keep_more_nor_longer_than_the_buffer() -> None:
    limits = recent_limits(Settings(recent_events=5000, buffer_maxlen=1000, buffer_max_age=60))
    assert (limits.events, limits.max_age_ms, limits.expiry_ms) == (1000, 60_000, 61_000)
    unbounded = recent_limits(Settings(recent_events=500, buffer_maxlen=0, buffer_max_age=0, buffer_idle_ttl=30))
    assert (unbounded.events, unbounded.max_age_ms, unbounded.expiry_ms) == (500, 0, 30_000)
