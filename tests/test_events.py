"""gateway.events: Pub/Sub payloads and buffer entries become events whose SSE bytes are built once."""

from __future__ import annotations

import logging
import time

import pytest

from gateway.events import ENVELOPE_MARK, Event, decode_pubsub, from_stream_entry
from sse_gateway_client import ServerSentEvent, SSEParser


def envelope(stream_id: bytes, event_type: bytes, data: bytes) -> bytes:
    return ENVELOPE_MARK + stream_id + b"\n" + event_type + b"\n" + data


def test_envelope_decodes_to_id_type_and_multi_line_data() -> None:
    event = decode_pubsub("prices", envelope(b"1732700000000-3", b"tick", b"line one\nline two\r\nthree"))
    assert event.channel == "prices"
    assert event.stream_id == (1732700000000, 3)
    assert event.type == "tick"
    assert event.data == "line one\nline two\r\nthree"
    assert event.frame == b"id: 1732700000000-3\nevent: tick\ndata: line one\ndata: line two\ndata: three\n\n"


def test_envelope_with_empty_type_has_no_event_line() -> None:
    event = decode_pubsub("prices", envelope(b"5-0", b"", b"x"))
    assert (event.stream_id, event.type, event.data) == ((5, 0), None, "x")
    assert event.frame == b"id: 5-0\ndata: x\n\n"


def test_envelope_data_may_be_empty_and_contain_utf8() -> None:
    assert decode_pubsub("c", envelope(b"5-0", b"t", b"")).data == ""
    assert decode_pubsub("c", envelope(b"5-0", b"t", "ü\u2028€".encode())).data == "ü\u2028€"


def test_plain_payload_has_no_id_and_no_type() -> None:
    event = decode_pubsub("news", b"hello\nworld")
    assert (event.stream_id, event.type, event.data) == (None, None, "hello\nworld")
    assert event.frame == b"data: hello\ndata: world\n\n"


def test_plain_payload_keeps_its_channel() -> None:
    event = decode_pubsub("news", b"hello")
    assert event.channel == "news"
    assert event.multi_body == b"event: news\ndata: hello\n\n"


def test_non_utf8_plain_payload_becomes_replacement_characters() -> None:
    event = decode_pubsub("news", b"\xff\xfeok\xc3")
    assert event.stream_id is None
    assert event.data == "\ufffd\ufffdok\ufffd"
    assert SSEParser().feed(event.frame) == [ServerSentEvent(data="\ufffd\ufffdok\ufffd")]


@pytest.mark.parametrize(
    ("event_type", "expected"),
    [(b"ev\ril", None), (b"ev\x00il", None), (b"gap", None), (b"x" * 129, None), (b"\xff", "\ufffd"), (b"ok", "ok")],
)
def test_envelope_with_a_type_sse_cannot_carry_keeps_its_id_and_loses_the_type(event_type, expected) -> None:
    event = decode_pubsub("news", envelope(b"1-0", event_type, b"data"))
    assert (event.stream_id, event.type, event.data) == ((1, 0), expected, "data")
    parser = SSEParser()
    assert parser.feed(event.frame) == [ServerSentEvent(data="data", event=expected or "message", id="1-0")]


@pytest.mark.parametrize(
    "payload",
    [
        envelope(b"not-an-id", b"t", b"data"),
        envelope(b"1-0\rretry: 1", b"t", b"data"),
        envelope(b"", b"t", b"data"),
        envelope(b"\xff-0", b"t", b"data"),
        ENVELOPE_MARK + b"99999999999999999999999-0",
        ENVELOPE_MARK,
    ],
)
def test_envelope_with_a_damaged_id_is_skipped_not_streamed(payload: bytes) -> None:
    assert decode_pubsub("news", payload) is None


def test_damaged_envelope_is_logged_with_its_channel(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="gateway.events"):
        assert decode_pubsub("news", envelope(b"not-an-id", b"t", b"data")) is None
    assert [(r.name, r.levelno, r.getMessage()) for r in caplog.records] == [
        ("gateway.events", logging.WARNING, "skipped a damaged envelope on channel news")
    ]


def test_payload_that_merely_contains_the_mark_later_is_plain() -> None:
    payload = b"x" + envelope(b"1-0", b"t", b"d")
    assert decode_pubsub("news", payload).stream_id is None


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


def test_from_stream_entry_reads_type_and_data() -> None:
    event = from_stream_entry("prices", b"1732700000000-7", {b"p": b"1732700000000-6", b"e": b"tick", b"d": b"a\nb"})
    assert (event.channel, event.stream_id, event.type, event.data) == ("prices", (1732700000000, 7), "tick", "a\nb")
    assert event.frame == b"id: 1732700000000-7\nevent: tick\ndata: a\ndata: b\n\n"


def test_from_stream_entry_accepts_a_str_id_and_empty_type() -> None:
    event = from_stream_entry("prices", "9-0", {b"p": b"", b"e": b"", b"d": b"x"})
    assert (event.stream_id, event.type, event.data) == ((9, 0), None, "x")


def test_from_stream_entry_with_missing_fields_gives_empty_data_and_no_type() -> None:
    event = from_stream_entry("prices", b"9-1", {})
    assert (event.stream_id, event.type, event.data) == ((9, 1), None, "")
    assert event.frame == b"id: 9-1\ndata: \n\n"


def test_from_stream_entry_tolerates_non_utf8_data() -> None:
    assert from_stream_entry("prices", b"9-1", {b"d": b"\xffa"}).data == "\ufffda"


def test_event_records_when_it_arrived_on_the_monotonic_clock() -> None:
    # The fan-out lag metric subtracts this from time.monotonic() when the event is written.
    before = time.monotonic()
    event = Event("c", (1, 0), None, "x")
    assert before <= event.arrived <= time.monotonic()


def test_repr_names_channel_id_type_and_data_start() -> None:
    assert repr(Event("c", (1, 2), "t", "x" * 100)) == f"Event('c', (1, 2), 't', {'x' * 40!r})"
