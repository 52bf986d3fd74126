"""gateway.brokers.envelope: Pub/Sub payloads and buffer entries become events, with their previous ids."""

from __future__ import annotations

import logging

import pytest

from gateway.brokers.envelope import ENVELOPE_MARK, ENVELOPE_MARK_V1, decode_pubsub, from_stream_entry
from sse_gateway_client import ServerSentEvent, SSEParser


def envelope(stream_id: bytes, event_type: bytes, data: bytes, previous: bytes = b"") -> bytes:
    return ENVELOPE_MARK + stream_id + b"\n" + previous + b"\n" + event_type + b"\n" + data


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
    with caplog.at_level(logging.WARNING, logger="gateway.brokers.envelope"):
        assert decode_pubsub("news", envelope(b"not-an-id", b"t", b"data")) is None
    assert [(r.name, r.levelno, r.getMessage()) for r in caplog.records] == [
        ("gateway.brokers.envelope", logging.WARNING, "skipped a damaged envelope on channel news")
    ]


def test_payload_that_merely_contains_the_mark_later_is_plain() -> None:
    payload = b"x" + envelope(b"1-0", b"t", b"d")
    assert decode_pubsub("news", payload).stream_id is None


def test_from_stream_entry_reads_type_and_data() -> None:
    event = from_stream_entry("prices", (b"1732700000000-7", {b"p": b"1732700000000-6", b"e": b"tick", b"d": b"a\nb"}))
    assert (event.channel, event.stream_id, event.type, event.data) == ("prices", (1732700000000, 7), "tick", "a\nb")
    assert event.previous == (1732700000000, 6)
    assert event.frame == b"id: 1732700000000-7\nevent: tick\ndata: a\ndata: b\n\n"


def test_from_stream_entry_with_an_empty_type_and_previous_is_untyped_and_first_of_its_stream() -> None:
    event = from_stream_entry("prices", (b"9-0", {b"p": b"", b"e": b"", b"d": b"x"}))
    assert (event.stream_id, event.previous, event.type, event.data) == ((9, 0), (0, 0), None, "x")


def test_from_stream_entry_with_missing_fields_gives_empty_data_and_no_type() -> None:
    event = from_stream_entry("prices", (b"9-1", {}))
    assert (event.stream_id, event.type, event.data) == ((9, 1), None, "")
    assert event.frame == b"id: 9-1\ndata: \n\n"


def test_from_stream_entry_tolerates_non_utf8_data() -> None:
    assert from_stream_entry("prices", (b"9-1", {b"d": b"\xffa"})).data == "\ufffda"


def test_envelope_carries_the_previous_id_and_an_empty_one_means_first_of_its_stream() -> None:
    assert decode_pubsub("c", envelope(b"7-1", b"", b"x", previous=b"7-0")).previous == (7, 0)
    assert decode_pubsub("c", envelope(b"7-1", b"", b"x")).previous == (0, 0)


def test_a_first_version_envelope_is_read_with_no_previous_id() -> None:
    event = decode_pubsub("c", ENVELOPE_MARK_V1 + b"7-1\ntick\nline")
    assert (event.stream_id, event.previous, event.type, event.data) == ((7, 1), None, "tick", "line")


def test_envelope_with_a_damaged_previous_id_is_skipped() -> None:
    assert decode_pubsub("c", envelope(b"7-1", b"", b"x", previous=b"seven")) is None


def test_plain_payload_has_no_previous_id() -> None:
    assert decode_pubsub("news", b"hello").previous is None
