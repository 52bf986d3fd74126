"""gateway.fanout.subscriber: one client's cursor, bounded buffer, eviction and replay hold. Pure asyncio, no Redis."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time

import pytest

from gateway.cursor import channel_set, parse_cursor
from gateway.events import Event
from gateway.fanout.subscriber import Subscriber, gap_frame
from gateway.fanout.writer import PlainWriter, SteppedWriter
from sse_gateway_client import ServerSentEvent, SSEParser


def ev(channel: str, ms: int, seq: int = 0, data: str | None = None, event_type: str | None = None) -> Event:
    return Event(channel, (ms, seq), event_type, f"{channel}-{ms}-{seq}" if data is None else data)


def live(channels: list[str] | tuple[str, ...], positions: dict | None = None, **bounds: int) -> Subscriber:
    subscriber = Subscriber(
        channels, max_events=bounds.get("max_events", 100), max_bytes=bounds.get("max_bytes", 10**6)
    )
    subscriber.start_at(positions or dict.fromkeys(channels, (0, 0)))
    subscriber.go_live()
    return subscriber


def test_ids_at_or_below_the_position_are_dropped() -> None:
    subscriber = live(["a"], {"a": (5, 0)})
    for event in (ev("a", 4), ev("a", 5), ev("a", 5, 1), ev("a", 6), ev("a", 5, 2), ev("a", 6)):
        subscriber.offer(event)
    assert subscriber.take() == ev("a", 5, 1).frame + ev("a", 6).frame
    assert subscriber.positions == {"a": (6, 0)}
    assert subscriber.last_event_id == "6-0"


def test_queued_frames_come_out_as_one_write_in_order() -> None:
    subscriber = live(["a"])
    events = [ev("a", n) for n in (1, 2, 3)]
    for event in events:
        subscriber.offer(event)
    assert subscriber.take() == b"".join(event.frame for event in events)
    assert subscriber.take() == b""


def test_the_same_frame_bytes_are_queued_for_every_subscriber() -> None:
    first, second = live(["a"]), live(["a"])
    event = ev("a", 1)
    first.offer(event)
    second.offer(event)
    assert first._frames[0] is event.frame
    assert second._frames[0] is event.frame
    assert first.take() is event.frame


def test_overflow_by_event_count_closes_and_frees_queued_frames() -> None:
    subscriber = live(["a"], max_events=2)
    subscriber.offer(ev("a", 1))
    subscriber.offer(ev("a", 2))
    assert subscriber.close_reason is None
    subscriber.offer(ev("a", 3))
    assert subscriber.close_reason == "overflow"
    assert subscriber._frames == [] and subscriber._size == 0
    subscriber.offer(ev("a", 4))
    assert subscriber.take() == b""


def test_overflow_by_bytes_closes_and_frees_queued_frames() -> None:
    one, two, three = ev("a", 1, data="x" * 100), ev("a", 2, data="y" * 100), ev("a", 3, data="z")
    subscriber = live(["a"], max_bytes=len(one.frame) + len(two.frame))
    subscriber.offer(one)
    subscriber.offer(two)
    assert subscriber.close_reason is None
    subscriber.offer(three)
    assert subscriber.close_reason == "overflow"
    assert subscriber._frames == [] and subscriber._size == 0
    assert subscriber.take() == b""


def test_backlog_is_not_bounded_but_live_events_are() -> None:
    subscriber = Subscriber(["a"], max_events=2, max_bytes=10**6)
    subscriber.start_at({"a": (0, 0)})
    subscriber.accept([ev("a", n) for n in range(1, 6)])
    assert subscriber.close_reason is None
    assert subscriber.take().count(b"\n\n") == 5


def test_close_keeps_the_first_reason() -> None:
    subscriber = live(["a"])
    subscriber.close("client_left")
    subscriber.close("overflow")
    assert subscriber.close_reason == "client_left"


async def test_wait_sleeps_while_the_flusher_writes_and_wakes_for_a_blocked_write_or_close() -> None:
    subscriber = live(["a"])
    subscriber.go_direct(SteppedWriter(_blocking_send), lambda s: None)
    subscriber.offer(ev("a", 1))
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(subscriber.wait(), 0.01)
    subscriber.write_now(time.monotonic())
    assert subscriber.blocked is not None and subscriber.writing
    await asyncio.wait_for(subscriber.wait(), 5)
    subscriber.drop_blocked()
    subscriber.close("shutdown")
    await asyncio.wait_for(subscriber.wait(), 5)


async def test_a_plain_write_handed_to_the_task_is_not_taken_for_a_stalled_one_and_outlives_a_close() -> None:
    written: list[bytes] = []

    async def send(message: dict) -> None:
        written.append(message["body"])

    subscriber = live(["a"])
    subscriber.writer = asyncio.current_task()
    subscriber.go_direct(PlainWriter(send), lambda s: None)
    subscriber.offer(ev("a", 1))
    subscriber.write_now(time.monotonic())
    assert subscriber.blocked is not None and not subscriber.writing  # not under way until the task starts it
    subscriber.close("shutdown")  # a drain, between the flusher's hand-over and the task's turn
    assert not subscriber.writer_cancelled
    await subscriber.finish_write()
    assert written == [ev("a", 1).frame]


async def _blocking_send(message: dict) -> None:
    await asyncio.get_running_loop().create_future()


def test_tick_queues_a_heartbeat_after_a_quiet_heartbeat_interval() -> None:
    subscriber = Subscriber(["a"], max_events=10, max_bytes=10**6, heartbeat=15)
    subscriber.start_at({"a": (0, 0)})
    subscriber.go_live()
    subscriber.tick(subscriber.last_write + 14, time.time())
    assert subscriber.queued == 0
    subscriber.tick(subscriber.last_write + 15, time.time())
    assert subscriber.take() == b": keepalive\n"


def test_tick_closes_a_stalled_writer_and_an_expired_token() -> None:
    stalled = Subscriber(["a"], max_events=10, max_bytes=10**6, send_timeout=30)
    stalled.writing = True
    stalled.tick(stalled.write_started + 29, time.time())
    assert stalled.close_reason is None
    stalled.tick(stalled.write_started + 31, time.time())
    assert stalled.close_reason == "stalled"
    expiring = Subscriber(["a"], max_events=10, max_bytes=10**6, expires_at=1000.0)
    expiring.tick(time.monotonic(), 999.0)
    assert expiring.close_reason is None
    expiring.tick(time.monotonic(), 1000.0)
    assert expiring.close_reason == "auth_expired"


def test_live_events_are_held_during_replay_and_deduplicated_on_go_live() -> None:
    subscriber = Subscriber(["a"], max_events=100, max_bytes=10**6)
    subscriber.start_at({"a": (1, 0)})
    assert subscriber.replaying
    subscriber.offer(ev("a", 3))
    subscriber.offer(ev("a", 4))
    assert subscriber.take() == b""
    subscriber.accept([ev("a", 1), ev("a", 2), ev("a", 3)])
    assert subscriber.take() == ev("a", 2).frame + ev("a", 3).frame
    subscriber.go_live()
    assert not subscriber.replaying
    assert subscriber.take() == ev("a", 4).frame
    subscriber.offer(ev("a", 5))
    assert subscriber.take() == ev("a", 5).frame


def test_held_events_past_the_count_bound_overflow() -> None:
    subscriber = Subscriber(["a"], max_events=2, max_bytes=10**6)
    subscriber.start_at({"a": (0, 0)})
    for n in (1, 2, 3):
        subscriber.offer(ev("a", n))
    assert subscriber.close_reason == "overflow"
    subscriber.go_live()
    assert subscriber.take() == b""


def test_multi_channel_frames_carry_a_cursor_that_maps_back_to_each_position() -> None:
    channels = channel_set(["beta", "alpha"])
    subscriber = live(channels, {"alpha": (10, 0), "beta": (20, 0)})
    subscriber.offer(ev("alpha", 11, data="one"))
    subscriber.offer(ev("beta", 1732700000000, 5, data="two", event_type="tick"))
    subscriber.offer(ev("alpha", 9))  # a duplicate: dropped
    events = SSEParser().feed(subscriber.take())
    assert [(e.event, e.data) for e in events] == [("alpha", "one"), ("beta:tick", "two")]
    assert parse_cursor(events[0].id, channels) == {"alpha": (11, 0), "beta": (20, 0)}
    assert parse_cursor(events[1].id, channels) == {"alpha": (11, 0), "beta": (1732700000000, 5)}
    assert subscriber.last_event_id == events[1].id


def test_multi_channel_cursor_before_any_event_is_the_start_position() -> None:
    channels = ("a", "b")
    subscriber = live(channels, {"a": (3, 1), "b": (0, 0)})
    assert parse_cursor(subscriber.last_event_id, channels) == {"a": (3, 1), "b": (0, 0)}


def test_plain_events_pass_through_without_id_or_position_change() -> None:
    single = live(["a"], {"a": (5, 0)})
    single.offer(Event("a", None, None, "plain"))
    assert single.take() == b"data: plain\n\n"
    assert single.positions == {"a": (5, 0)}

    multi = live(("a", "b"), {"a": (5, 0), "b": (6, 0)})
    multi.offer(Event("b", None, "note", "plain"))
    assert multi.take() == b"event: b:note\ndata: plain\n\n"
    assert multi.positions == {"a": (5, 0), "b": (6, 0)}


def test_plain_events_keep_the_clients_resume_point() -> None:
    subscriber = live(["a"])
    subscriber.offer(ev("a", 7))
    subscriber.offer(Event("a", None, None, "plain"))
    events = SSEParser().feed(subscriber.take())
    assert [(e.data, e.id) for e in events] == [("a-7-0", "7-0"), ("plain", "7-0")]


def test_gap_frame_is_a_gap_event_with_json_positions() -> None:
    events = SSEParser().feed(gap_frame("prices", (5, 0), (1732700000000, 2)))
    assert len(events) == 1
    assert events[0].event == "gap" and events[0].id == ""
    assert json.loads(events[0].data) == {"channel": "prices", "requested": "5-0", "first_available": "1732700000000-2"}


def test_offer_gap_queues_the_gap_before_the_backlog() -> None:
    subscriber = Subscriber(["a"], max_events=100, max_bytes=10**6)
    subscriber.start_at({"a": (1, 0)})
    subscriber.offer_gap("a", (1, 0), (9, 0))
    subscriber.accept([ev("a", 9)])
    events = SSEParser().feed(subscriber.take())
    assert [e.event for e in events] == ["gap", "message"]
    assert events[1] == ServerSentEvent(data="a-9-0", id="9-0")


def test_closed_subscriber_ignores_gaps() -> None:
    subscriber = live(["a"])
    subscriber.close("client_left")
    subscriber.offer_gap("a", (1, 0), (9, 0))
    assert subscriber.take() == b""


async def test_overflow_cancels_a_writer_stuck_in_a_send() -> None:
    subscriber = live(["a"], max_events=1)
    stuck = asyncio.create_task(asyncio.sleep(3600))
    subscriber.writer, subscriber.writing = stuck, True
    subscriber.offer(ev("a", 1))
    subscriber.offer(ev("a", 2))
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.wait_for(stuck, 5)
    assert stuck.cancelled()


async def test_close_while_not_writing_leaves_the_writer_alone() -> None:
    subscriber = live(["a"])
    busy = asyncio.create_task(asyncio.sleep(3600))
    subscriber.writer, subscriber.writing = busy, False
    subscriber.close("client_left")
    await asyncio.sleep(0)
    assert not busy.done() and not subscriber.writer_cancelled
    busy.cancel()


@pytest.mark.parametrize("reason", ["shutdown", "auth_expired", "client_left"])
async def test_any_close_while_blocked_writing_cancels_the_writer(reason) -> None:
    subscriber = live(["a"])
    stuck = asyncio.create_task(asyncio.sleep(3600))
    subscriber.writer, subscriber.writing = stuck, True
    subscriber.close(reason)
    await asyncio.sleep(0)
    assert stuck.cancelled() and subscriber.writer_cancelled


def _conflating(channels: list[str], conflate: list[str], **bounds: int) -> Subscriber:
    subscriber = Subscriber(
        channels,
        max_events=bounds.get("max_events", 1000),
        max_bytes=bounds.get("max_bytes", 1 << 20),
        conflate=conflate,
    )
    subscriber.start_at({c: (0, 0) for c in channels})
    subscriber.go_live()
    return subscriber


def test_conflated_channel_keeps_only_its_newest_unsent_event() -> None:
    subscriber = _conflating(["prices"], ["prices"])
    for ms in range(1, 6):
        subscriber.offer(ev("prices", ms, data=f"p{ms}"))
    assert subscriber.queued == 1
    assert SSEParser().feed(subscriber.take()) == [ServerSentEvent(data="p5", id="5-0")]
    subscriber.offer(ev("prices", 6, data="p6"))
    assert [e.data for e in SSEParser().feed(subscriber.take())] == ["p6"]


def test_a_slow_client_of_a_conflated_channel_is_not_evicted() -> None:
    subscriber = _conflating(["prices"], ["prices"], max_events=3)
    for ms in range(1, 500):
        subscriber.offer(ev("prices", ms))
    assert subscriber.close_reason is None and subscriber.queued == 1


def test_conflation_on_a_multi_channel_stream_keeps_cursors_growing_on_the_wire() -> None:
    subscriber = _conflating(["news", "prices"], ["prices"])
    subscriber.offer(ev("prices", 1, data="p1"))
    subscriber.offer(ev("news", 2, data="n2"))
    subscriber.offer(ev("prices", 3, data="p3"))
    subscriber.offer(ev("news", 4, data="n4"))
    events = SSEParser().feed(subscriber.take())
    assert [e.data for e in events] == ["n2", "p3", "n4"]  # news is not conflated; p1 was replaced by p3
    cursors = [parse_cursor(e.id, ("news", "prices")) for e in events]
    assert cursors == sorted(cursors, key=lambda c: (c["news"], c["prices"]))
    assert cursors[-1] == {"news": (4, 0), "prices": (3, 0)}


def test_messages_without_an_id_of_a_conflated_channel_are_conflated_like_any_other() -> None:
    # A bare channel's messages (a plain PUBLISH from another program) carry no id; a slow client keeps the newest.
    subscriber = _conflating(["prices"], ["prices"], max_events=3)
    subscriber.offer(ev("prices", 1, data="p1"))
    for n in range(500):
        subscriber.offer(Event("prices", None, None, f"bare {n}"))
    assert subscriber.close_reason is None and subscriber.queued == 1
    assert SSEParser().feed(subscriber.take()) == [ServerSentEvent(data="bare 499")]
    subscriber.offer(Event("prices", None, None, "bare"))
    subscriber.offer(ev("prices", 2, data="p2"))
    assert SSEParser().feed(subscriber.take()) == [ServerSentEvent(data="p2", id="2-0")]


def test_messages_without_an_id_of_a_channel_not_conflated_are_all_kept() -> None:
    subscriber = _conflating(["news", "prices"], ["prices"])
    for n in range(3):
        subscriber.offer(Event("news", None, None, f"bare {n}"))
    assert [(e.event, e.data) for e in SSEParser().feed(subscriber.take())] == [("news", f"bare {n}") for n in range(3)]


def test_replaced_frames_are_compacted_away() -> None:
    subscriber = _conflating(["a", "b"], ["a"])
    for ms in range(1, 200):
        subscriber.offer(ev("a", ms))
    subscriber.offer(ev("b", 500, data="b"))
    assert len(subscriber._frames) < 40
    assert [e.event for e in SSEParser().feed(subscriber.take())] == ["a", "b"]


async def test_tick_cancels_a_closed_streams_last_write_that_never_finishes() -> None:
    subscriber = live(["a"])
    subscriber._send_timeout = 30
    stuck = asyncio.create_task(asyncio.sleep(3600))
    subscriber.close("shutdown")  # not writing yet: nothing to cancel
    subscriber.writer, subscriber.writing, subscriber.write_started = stuck, True, time.monotonic()
    subscriber.tick(subscriber.write_started + 29, time.time())
    assert not stuck.cancelled() and not subscriber.writer_cancelled
    subscriber.tick(subscriber.write_started + 31, time.time())
    await asyncio.sleep(0)
    assert stuck.cancelled() and subscriber.writer_cancelled


def test_heartbeats_are_counted_apart_from_event_frames() -> None:
    subscriber = Subscriber(["a"], max_events=10, max_bytes=10**6, heartbeat=1)
    subscriber.start_at({"a": (0, 0)})
    subscriber.go_live()
    subscriber.tick(subscriber.last_write + 2, time.time())
    subscriber.offer(ev("a", 1))
    assert (subscriber.queued, subscriber.heartbeats) == (2, 1)
    assert subscriber.oldest_arrival is not None  # the event behind a heartbeat still gets its lag measured
    subscriber.take()
    assert (subscriber.queued, subscriber.heartbeats) == (0, 0)
