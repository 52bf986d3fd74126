"""The client's text/event-stream parser against the WHATWG interpretation rules. Pure: no server."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sse_gateway_client import ServerSentEvent, SSEParser


def parse(*chunks: bytes) -> list[ServerSentEvent]:
    parser = SSEParser()
    return [event for chunk in chunks for event in parser.feed(chunk)]


def one_byte_at_a_time(stream: bytes) -> list[ServerSentEvent]:
    return parse(*(stream[i : i + 1] for i in range(len(stream))))


def test_simple_event_has_defaults() -> None:
    assert parse(b"data: hello\n\n") == [ServerSentEvent(data="hello", event="message", id="", retry=None)]


def test_incomplete_event_is_not_dispatched() -> None:
    assert parse(b"data: hello\n") == []
    assert parse(b"data: hello") == []


@pytest.mark.parametrize("ending", [b"\n", b"\r", b"\r\n"])
def test_each_line_ending_style_dispatches(ending: bytes) -> None:
    stream = b"event: tick" + ending + b"data: a" + ending + b"data: b" + ending + ending
    assert parse(stream) == [ServerSentEvent(data="a\nb", event="tick")]


def test_mixed_line_endings_in_one_stream() -> None:
    stream = b"data: one\r\ndata: two\rdata: three\n\r\ndata: four\r\r"
    assert parse(stream) == [ServerSentEvent(data="one\ntwo\nthree"), ServerSentEvent(data="four")]


def test_cr_at_end_of_chunk_and_lf_in_next_chunk_is_one_line_ending() -> None:
    # Were the split CRLF read as two endings, the LF would be a blank line and dispatch "a" before "b" arrives.
    assert parse(b"data: a\r", b"\ndata: b\r", b"\n\r", b"\n") == [ServerSentEvent(data="a\nb")]


def test_lone_cr_at_end_of_chunk_ends_the_line_at_once() -> None:
    parser = SSEParser()
    assert parser.feed(b"data: x\r") == []
    assert parser.feed(b"\r") == [ServerSentEvent(data="x")]


def test_multibyte_utf8_split_across_chunks() -> None:
    stream = "data: é€😀\n\n".encode()
    assert one_byte_at_a_time(stream) == [ServerSentEvent(data="é€😀")]


def test_invalid_utf8_becomes_replacement_character() -> None:
    assert parse(b"data: a\xffb\n\n") == [ServerSentEvent(data="a\ufffdb")]


def test_single_leading_bom_is_stripped_even_when_split() -> None:
    assert parse(b"\xef\xbb", b"\xbfdata: x\n\n") == [ServerSentEvent(data="x")]


def test_only_the_first_bom_is_stripped() -> None:
    # After the first BOM, the second one is part of a field name, so the line is an unknown field.
    assert parse("\ufeff\ufeffdata: x\n\ndata: y\n\n".encode()) == [ServerSentEvent(data="y")]


def test_bom_after_the_start_is_data() -> None:
    assert parse("data: \ufeffx\n\n".encode()) == [ServerSentEvent(data="\ufeffx")]


def test_comments_are_ignored() -> None:
    assert parse(b": heartbeat\n:\ndata: a\n: in the middle\ndata: b\n\n") == [ServerSentEvent(data="a\nb")]


def test_comment_only_block_dispatches_nothing() -> None:
    assert parse(b": ping\n\n") == []


def test_empty_data_line_dispatches_event_with_empty_data() -> None:
    assert parse(b"data:\n\n") == [ServerSentEvent(data="")]
    assert parse(b"data\n\n") == [ServerSentEvent(data="")]


def test_two_empty_data_lines_give_one_newline() -> None:
    assert parse(b"data\ndata\n\n") == [ServerSentEvent(data="\n")]


def test_block_without_data_dispatches_nothing_and_resets_event_type() -> None:
    assert parse(b"event: tick\n\ndata: x\n\n") == [ServerSentEvent(data="x", event="message")]


def test_empty_event_field_means_message() -> None:
    assert parse(b"event:\ndata: x\n\n") == [ServerSentEvent(data="x", event="message")]


def test_id_is_carried_to_following_events() -> None:
    events = parse(b"id: 1\ndata: a\n\ndata: b\n\nid: 2\ndata: c\n\n")
    assert [(event.id, event.data) for event in events] == [("1", "a"), ("1", "b"), ("2", "c")]


def test_id_only_block_moves_last_event_id_without_dispatch() -> None:
    parser = SSEParser()
    assert parser.feed(b"id: 7\n\n") == []
    assert parser.last_event_id == "7"


def test_empty_id_resets_last_event_id() -> None:
    parser = SSEParser()
    events = parser.feed(b"id: 5\ndata: a\n\nid\ndata: b\n\n")
    assert [event.id for event in events] == ["5", ""]
    assert parser.last_event_id == ""


def test_id_containing_nul_is_ignored() -> None:
    parser = SSEParser()
    events = parser.feed(b"id: 3\ndata: a\n\nid: 4\x005\ndata: b\n\n")
    assert [event.id for event in events] == ["3", "3"]
    assert parser.last_event_id == "3"


def test_id_of_an_unfinished_event_is_not_committed() -> None:
    parser = SSEParser()
    parser.feed(b"id: 1\ndata: a\n\nid: 2\ndata: b\n")
    assert parser.last_event_id == "1"


def test_retry_accepts_only_ascii_digits() -> None:
    parser = SSEParser()
    assert parser.feed(b"retry: 2500\ndata: a\n\n") == [ServerSentEvent(data="a", retry=2500)]
    for bad in (b"retry: 12a\n", b"retry: -1\n", b"retry: 1.5\n", b"retry: \xd9\xa3\n", b"retry:\n", b"retry:  7\n"):
        parser.feed(bad)
    assert parser.retry == 2500
    assert parser.feed(b"data: b\n\n") == [ServerSentEvent(data="b", retry=None)]


def test_retry_without_data_still_updates_parser() -> None:
    parser = SSEParser()
    assert parser.feed(b"retry: 10000\n\n") == []
    assert parser.retry == 10000


@pytest.mark.parametrize("separator", ["\u2028", "\u2029", "\x85", "\x0b", "\x0c", "\x1c"])
def test_unicode_line_separators_stay_inside_data(separator: str) -> None:
    stream = f"data: a{separator}b\n\n".encode()
    assert parse(stream) == [ServerSentEvent(data=f"a{separator}b")]


def test_field_name_without_colon_has_empty_value() -> None:
    assert parse(b"data\nevent\n\n") == [ServerSentEvent(data="", event="message")]


def test_only_one_leading_space_is_removed() -> None:
    assert parse(b"data:  two\ndata:nospace\ndata:\tx \n\n") == [ServerSentEvent(data=" two\nnospace\n\tx ")]


def test_value_keeps_later_colons() -> None:
    assert parse(b'data: {"a": 1}\nevent: stocks:trade\n\n') == [ServerSentEvent(data='{"a": 1}', event="stocks:trade")]


def test_field_names_are_case_sensitive_and_unknown_fields_ignored() -> None:
    assert parse(b"Data: x\nfoo: bar\ndata: y\n\n") == [ServerSentEvent(data="y")]


def test_reset_drops_incomplete_event_but_keeps_id_and_retry() -> None:
    parser = SSEParser()
    parser.feed(b"retry: 100\nid: 9\ndata: a\n\ndata: half")
    parser.reset()
    # A new connection: its first id-less event inherits the id, as in a browser.
    assert parser.feed(b"data: b\n\n") == [ServerSentEvent(data="b", id="9")]
    assert (parser.last_event_id, parser.retry) == ("9", 100)


def test_reset_strips_bom_of_the_new_stream() -> None:
    parser = SSEParser()
    parser.feed(b"data: a\n\n")
    parser.reset()
    assert parser.feed(b"\xef\xbb\xbfdata: b\n\n") == [ServerSentEvent(data="b")]


def test_initial_last_event_id() -> None:
    assert parse(b"data: a\n\n")[0].id == ""
    assert SSEParser("42").feed(b"data: a\n\n") == [ServerSentEvent(data="a", id="42")]


def _chunked(stream: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({cut % (len(stream) + 1) for cut in cuts})
    bounds = [0, *points, len(stream)]
    return [stream[start:end] for start, end in zip(bounds, bounds[1:], strict=False)]


@given(
    text=st.text(),
    endings=st.lists(st.sampled_from(["\n", "\r", "\r\n"]), min_size=1),
    cuts=st.lists(st.integers(min_value=0, max_value=10_000)),
)
def test_framed_text_round_trips_through_any_chunking(text: str, endings: list[str], cuts: list[int]) -> None:
    lines = re.split(r"\r\n|\r|\n", text)
    line_endings = [endings[i % len(endings)] for i in range(len(lines))]
    # The blank line repeats the last ending: a CR followed by LF would merge into one CRLF ending, not dispatch.
    framed = "".join(f"data: {line}{end}" for line, end in zip(lines, line_endings, strict=True)) + line_endings[-1]
    stream = framed.encode("utf-8")
    expected = re.sub(r"\r\n|\r", "\n", text)
    assert parse(*_chunked(stream, cuts)) == [ServerSentEvent(data=expected)]


def _feed_all(chunks: list[bytes]) -> tuple[list[ServerSentEvent], str, int | None]:
    parser = SSEParser()
    events = [event for chunk in chunks for event in parser.feed(chunk)]
    return events, parser.last_event_id, parser.retry


@given(stream=st.binary(), cuts=st.lists(st.integers(min_value=0, max_value=10_000)))
def test_chunking_never_changes_the_result(stream: bytes, cuts: list[int]) -> None:
    assert _feed_all(_chunked(stream, cuts)) == _feed_all([stream])
