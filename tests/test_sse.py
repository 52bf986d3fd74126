"""gateway.sse: framing, and why no payload can forge a field. Frames are parsed back by the spec-following parser."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.sse import (
    MAX_EVENT_TYPE_LENGTH,
    data_lines,
    encode_comment,
    encode_event,
    encode_retry,
    event_type_problem,
)
from sse_gateway_client import ServerSentEvent, SSEParser


def parse(stream: bytes) -> list[ServerSentEvent]:
    return SSEParser().feed(stream)


def normalised(text: str) -> str:
    return re.sub(r"\r\n|\r", "\n", text)


def test_event_frame_has_id_then_event_then_data_then_blank_line() -> None:
    frame = encode_event("hello", event="tick", event_id="1732700000000-0")
    assert frame == b"id: 1732700000000-0\nevent: tick\ndata: hello\n\n"


def test_data_only_frame_has_no_id_or_event_line() -> None:
    assert encode_event("hello") == b"data: hello\n\n"


def test_each_data_line_gets_its_own_data_field() -> None:
    assert encode_event("a\nb\r\nc\rd") == b"data: a\ndata: b\ndata: c\ndata: d\n\n"


def test_multi_line_data_parses_back_joined_with_lf() -> None:
    assert parse(encode_event("one\ntwo\nthree")) == [ServerSentEvent(data="one\ntwo\nthree")]


def test_empty_data_still_dispatches_an_event() -> None:
    frame = encode_event("")
    assert frame == b"data: \n\n"
    assert parse(frame) == [ServerSentEvent(data="")]


def test_data_lines_always_emits_at_least_one_line() -> None:
    assert data_lines("") == b"data: \n"


INJECTIONS = [
    "hello\nevent: forged\n\ndata: second",
    "hello\r\nid: 999\r\n\r\ndata: second",
    "hello\rretry: 999999999\r\rdata: second",
    "\rid: 1\r",
    "\n\n\n",
    "\r\n\r\n",
    "a\r\n\rb\n\r\nc",
    "id: 5-0\n\nevent: x\n\ndata: y",
    "nul\x00inside\x00data",
]


@pytest.mark.parametrize("data", INJECTIONS)
def test_injection_in_data_parses_as_one_event_with_the_original_data(data: str) -> None:
    parser = SSEParser()
    events = parser.feed(encode_event(data, event="safe", event_id="7-0"))
    assert events == [ServerSentEvent(data=normalised(data), event="safe", id="7-0")]
    assert parser.retry is None


@pytest.mark.parametrize("data", INJECTIONS)
def test_injection_in_data_without_id_leaves_the_id_empty(data: str) -> None:
    assert parse(encode_event(data)) == [ServerSentEvent(data=normalised(data), event="message", id="")]


@pytest.mark.parametrize("separator", ["\u2028", "\u2029", "\u0085", "\x0b", "\x0c", "\x1c", "\x1d", "\x1e"])
def test_unicode_separators_stay_inside_one_data_line(separator: str) -> None:
    data = f"left{separator}right{separator}"
    frame = encode_event(data)
    assert frame == b"data: " + data.encode() + b"\n\n"
    assert parse(frame) == [ServerSentEvent(data=data)]


def test_all_unicode_separators_together_survive_intact() -> None:
    data = "a\u2028b\u2029c\u0085d\x0be\x0cf"
    assert parse(encode_event(data, event="t")) == [ServerSentEvent(data=data, event="t")]


@pytest.mark.parametrize("bad", ["a\rb", "a\nb", "a\r\nb", "\r", "\n", "a\x00b", "\x00"])
def test_encode_event_refuses_line_breaks_and_nul_in_event(bad: str) -> None:
    with pytest.raises(ValueError, match="event must not contain"):
        encode_event("data", event=bad)


@pytest.mark.parametrize("bad", ["1-0\r", "1-0\nretry: 1", "1-0\r\n", "1\x00-0"])
def test_encode_event_refuses_line_breaks_and_nul_in_id(bad: str) -> None:
    with pytest.raises(ValueError, match="id must not contain"):
        encode_event("data", event_id=bad)


def test_empty_id_is_written_so_it_resets_the_resume_point() -> None:
    frame = encode_event("x", event_id="")
    assert frame == b"id: \ndata: x\n\n"
    parser = SSEParser(last_event_id="5-0")
    assert parser.feed(frame) == [ServerSentEvent(data="x", id="")]


@pytest.mark.parametrize(
    ("event", "problem"),
    [
        ("", "event type must not be empty"),
        ("x" * (MAX_EVENT_TYPE_LENGTH + 1), f"event type must be at most {MAX_EVENT_TYPE_LENGTH} characters"),
        ("a\rb", "event type must not contain CR, LF or NUL"),
        ("a\nb", "event type must not contain CR, LF or NUL"),
        ("a\x00b", "event type must not contain CR, LF or NUL"),
    ],
)
def test_event_type_problem_names_the_problem(event: str, problem: str) -> None:
    assert event_type_problem(event) == problem


@pytest.mark.parametrize("event", ["tick", "price.update", "a:b", "x" * MAX_EVENT_TYPE_LENGTH, "ünïcode", "a\u2028b"])
def test_event_type_problem_accepts_valid_types(event: str) -> None:
    assert event_type_problem(event) is None


@pytest.mark.parametrize("event", ["\ud800", "a\udfffb", "tick\udc00"])
def test_event_type_with_a_lone_surrogate_is_refused(event: str) -> None:
    # JSON can spell a lone surrogate (\ud800), which UTF-8 cannot carry: the frame could never be encoded.
    assert event_type_problem(event) == "event type must be valid Unicode text"


def test_comment_lines_each_start_with_a_colon() -> None:
    assert encode_comment("keepalive") == b": keepalive\n"
    assert encode_comment("a\nb\rc") == b": a\n: b\n: c\n"


def test_comment_with_injected_fields_dispatches_nothing() -> None:
    parser = SSEParser()
    assert parser.feed(encode_comment("x\rdata: evil\r\rretry: 1\n\n")) == []
    assert parser.retry is None
    assert parser.last_event_id == ""


def test_retry_frame_sets_the_reconnection_time() -> None:
    parser = SSEParser()
    assert encode_retry(3000) == b"retry: 3000\n\n"
    assert parser.feed(encode_retry(3000)) == []
    assert parser.retry == 3000


def test_frames_in_sequence_parse_as_separate_events() -> None:
    stream = encode_comment("connected") + encode_event("a", event_id="1-0") + encode_event("b\nc", event_id="2-0")
    assert parse(stream) == [ServerSentEvent(data="a", id="1-0"), ServerSentEvent(data="b\nc", id="2-0")]


# Text as it arrives over HTTP: no lone surrogates, which UTF-8 cannot carry.
field_text = st.text(st.characters(exclude_characters="\r\n\x00", exclude_categories=("Cs",)))


@given(data=st.text(), event=field_text.filter(bool), event_id=field_text)
def test_any_text_round_trips_through_encode_and_the_spec_parser(data: str, event: str, event_id: str) -> None:
    parser = SSEParser()
    events = parser.feed(encode_event(data, event=event, event_id=event_id))
    assert events == [ServerSentEvent(data=normalised(data), event=event, id=event_id)]
    assert parser.retry is None


@given(data=st.text(), event=field_text.filter(bool))
def test_any_text_delivered_one_byte_at_a_time_gives_the_same_event(data: str, event: str) -> None:
    parser = SSEParser()
    frame = encode_event(data, event=event)
    events = [e for i in range(len(frame)) for e in parser.feed(frame[i : i + 1])]
    assert events == [ServerSentEvent(data=normalised(data), event=event)]
