"""gateway.fanout.joined: a span's frames joined once, shared while kept, and the spans kept bounded."""

from __future__ import annotations

from gateway.events import Event
from gateway.fanout.joined import JoinedSpans


def ev(n: int, size: int = 10) -> Event:
    return Event("a", (n, 0), None, f"{n}".ljust(size, "x"), previous=(n - 1, 0))


def test_the_same_span_is_joined_once_and_shared() -> None:
    spans = JoinedSpans()
    events = [ev(n) for n in range(1, 6)]
    first = spans.join("a", events)
    assert first == b"".join(e.frame for e in events)
    assert spans.join("a", list(events)) is first
    assert len(spans) == 1


def test_spans_that_differ_in_channel_or_either_end_are_joined_apart() -> None:
    spans = JoinedSpans()
    events = [ev(n) for n in range(1, 6)]
    whole = spans.join("a", events)
    assert spans.join("a", events[1:]) == b"".join(e.frame for e in events[1:])
    assert spans.join("a", events[:-1]) == b"".join(e.frame for e in events[:-1])
    assert spans.join("b", events) is not whole
    assert len(spans) == 4


def test_one_event_is_its_own_frame_and_not_kept() -> None:
    spans = JoinedSpans()
    event = ev(1)
    assert spans.join("a", [event]) is event.frame
    assert len(spans) == 0


def test_the_oldest_spans_go_first_past_either_bound() -> None:
    by_count = JoinedSpans(max_spans=2, max_bytes=10**6)
    for start in range(1, 4):
        by_count.join("a", [ev(start), ev(start + 1)])
    assert len(by_count) == 2
    by_bytes = JoinedSpans(max_spans=100, max_bytes=3 * len(b"".join([ev(1).frame, ev(2).frame])))
    for start in range(1, 6):
        by_bytes.join("a", [ev(start), ev(start + 1)])
    assert len(by_bytes) == 3 and by_bytes.bytes <= 3 * len(b"".join([ev(1).frame, ev(2).frame]))
    huge = JoinedSpans(max_spans=100, max_bytes=10)
    assert huge.join("a", [ev(1), ev(2)]) == ev(1).frame + ev(2).frame
    assert len(huge) == 0  # larger than the whole bound: joined for this stream, not kept
