"""gateway.events: an event's SSE bytes, built once, for single- and multi-channel streams."""

from __future__ import annotations

import time

from gateway.events import Event
from sse_gateway_client import ServerSentEvent, SSEParser


def test_multi_body_names_the_channel_when_there_is_no_type() -> None:
    event = Event("prices", (1, 0), None, "a\nb")
    assert event.multi_body == b"event: prices\ndata: a\ndata: b\n\n"


def test_multi_body_names_channel_and_type() -> None:
    event = Event("prices", (1, 0), "tick", "a")
    assert event.multi_body == b"event: prices:tick\ndata: a\n\n"
    assert SSEParser().feed(b"id: x\n" + event.multi_body) == [ServerSentEvent(data="a", event="prices:tick", id="x")]


def test_multi_body_has_no_id_line_and_is_built_once() -> None:
    event = Event("prices", (1, 0), None, "a")
    assert b"id:" not in event.multi_body
    assert event.multi_body is event.multi_body


def test_event_drops_a_type_that_would_forge_fields() -> None:
    event = Event("prices", (1, 0), "tick\ndata: forged", "a")
    assert event.type is None
    assert SSEParser().feed(event.frame) == [ServerSentEvent(data="a", id="1-0")]


def test_event_records_when_it_arrived_on_the_monotonic_clock() -> None:
    # The fan-out lag metric subtracts this from time.monotonic() when the event is written.
    before = time.monotonic()
    event = Event("c", (1, 0), None, "x")
    assert before <= event.arrived <= time.monotonic()


def test_repr_names_channel_id_type_and_data_start() -> None:
    assert repr(Event("c", (1, 2), "t", "x" * 100)) == f"Event('c', (1, 2), 't', {'x' * 40!r})"
