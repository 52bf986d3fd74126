"""gateway.cursor: stream ids for one channel, composite cursors for several."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.cursor import (
    ZERO,
    channel_set,
    channel_set_tag,
    format_cursor,
    format_position,
    format_stream_id,
    parse_cursor,
    parse_stream_id,
)
from gateway.errors import BadRequest

MAX = 2**64 - 1
stream_ids = st.tuples(st.integers(0, MAX), st.integers(0, MAX))
channel_names = st.from_regex(r"[A-Za-z0-9_.\-]{1,64}", fullmatch=True)


def cursor_for(channels: tuple[str, ...], positions: dict[str, tuple[int, int]]) -> str:
    return format_cursor(channel_set_tag(channels), [format_position(positions[c]) for c in channels])


def assert_bad_cursor(text: str, channels: tuple[str, ...]) -> None:
    with pytest.raises(BadRequest) as caught:
        parse_cursor(text, channels)
    assert caught.value.code == "bad_cursor"
    assert caught.value.status_code == 400


def test_stream_id_parses_to_ms_and_seq() -> None:
    assert parse_stream_id("1732700000000-0") == (1732700000000, 0)
    assert parse_stream_id("0-0") == ZERO
    assert parse_stream_id(f"{MAX}-{MAX}") == (MAX, MAX)


@given(stream_ids)
def test_stream_id_format_then_parse_round_trips(stream_id: tuple[int, int]) -> None:
    assert parse_stream_id(format_stream_id(stream_id)) == stream_id


@pytest.mark.parametrize(
    "text",
    [
        "",
        "1",
        "1-",
        "-1",
        "1-2-3",
        "a-0",
        " 1-0",
        "1-0 ",
        "1-0\n",
        "+1-0",
        "1.5-0",
        "1_0",
        f"{MAX + 1}-0",
        f"0-{MAX + 1}",
        "1" * 21 + "-0",
    ],
)
def test_stream_id_rejects_anything_else(text: str) -> None:
    with pytest.raises(ValueError):
        parse_stream_id(text)


@pytest.mark.parametrize("text", ["\u0661-\u0660", "\uff11\uff12-0", "1-\u0968"])
def test_stream_id_rejects_non_ascii_digits(text: str) -> None:
    # Redis ids are ASCII; a Last-Event-ID of Arabic-Indic or full-width digits is not one.
    with pytest.raises(ValueError):
        parse_stream_id(text)


def test_stream_id_errors_say_what_was_wrong_and_quote_the_text() -> None:
    with pytest.raises(ValueError, match=r"^not a stream id: 'x-1'$"):
        parse_stream_id("x-1")
    with pytest.raises(ValueError, match=rf"^stream id out of range: '{MAX + 1}-0'$"):
        parse_stream_id(f"{MAX + 1}-0")


def test_channel_set_is_unique_and_sorted() -> None:
    assert channel_set(["b", "a", "b", "c"]) == ("a", "b", "c")


def test_tag_depends_on_the_channel_set() -> None:
    assert channel_set_tag(("a", "b")) != channel_set_tag(("a", "c"))
    assert channel_set_tag(("a", "b")) == channel_set_tag(channel_set(["b", "a"]))


def test_tag_is_the_same_in_every_process_and_version() -> None:
    # Another replica, or this one after an upgrade, must accept the cursors already held by clients.
    assert channel_set_tag(("a", "b")) == "1ubll2z"
    assert channel_set_tag(("prices", "stocks")) == "7q1o7n"


def test_tag_separates_the_channel_names() -> None:
    assert channel_set_tag(("ab", "c")) != channel_set_tag(("a", "bc"))


def test_position_is_base36_ms_with_seq_only_when_non_zero() -> None:
    assert format_position((0, 0)) == "0"
    assert format_position((35, 0)) == "z"
    assert format_position((36, 1)) == "10~1"
    assert format_position((1732700000000, 2)) == "m3zoucjk~2"


@given(
    st.lists(channel_names, min_size=2, max_size=16, unique=True).flatmap(
        lambda names: st.tuples(
            st.just(channel_set(names)), st.lists(stream_ids, min_size=len(names), max_size=len(names))
        )
    )
)
def test_composite_cursor_round_trips_for_2_to_16_channels(case: tuple[tuple[str, ...], list]) -> None:
    channels, ids = case
    positions = dict(zip(channels, ids, strict=True))
    assert parse_cursor(cursor_for(channels, positions), channels) == positions


def test_composite_cursor_keeps_each_position_with_its_channel() -> None:
    channels = ("alpha", "beta", "gamma")
    positions = {"alpha": (5, 0), "beta": (1732700000000, 3), "gamma": ZERO}
    text = cursor_for(channels, positions)
    assert text.endswith("_5.m3zoucjk~3.0")
    assert parse_cursor(text, channels) == positions


def test_cursor_of_another_channel_set_is_refused() -> None:
    text = cursor_for(("a", "b"), {"a": (1, 0), "b": (2, 0)})
    assert_bad_cursor(text, ("a", "c"))
    assert_bad_cursor(text, ("a", "b", "c"))


def test_cursor_with_wrong_number_of_positions_is_refused() -> None:
    tag = channel_set_tag(("a", "b"))
    assert_bad_cursor(f"{tag}_1", ("a", "b"))
    assert_bad_cursor(f"{tag}_1.2.3", ("a", "b"))
    assert_bad_cursor(f"{tag}_", ("a", "b"))


@pytest.mark.parametrize(
    "body", ["A.B", "1.-1", "1~.2", "1~2~3.0", "1. 2", "1.2\n", "~1.2", "1..2", "\u0661.2", "1.2_3"]
)
def test_garbage_positions_are_refused(body: str) -> None:
    assert_bad_cursor(channel_set_tag(("a", "b")) + "_" + body, ("a", "b"))


@pytest.mark.parametrize("text", ["", "nonsense", "_", "1-0", "1732700000000-0", "x_1.2", "__"])
def test_garbage_cursors_are_refused(text: str) -> None:
    assert_bad_cursor(text, ("a", "b"))


@pytest.mark.parametrize(
    "body",
    [
        "zzzzzzzzzzzzz.0",  # 13 digits, above 2**64 - 1
        "0.0~zzzzzzzzzzzzz",
        "1" * 14 + ".0",  # more digits than any 64-bit number needs
        "3w5e11264sgsg.0",  # exactly 2**64
    ],
)
def test_out_of_range_positions_are_refused(body: str) -> None:
    assert_bad_cursor(channel_set_tag(("a", "b")) + "_" + body, ("a", "b"))


def test_largest_position_is_accepted() -> None:
    assert format_position((MAX, MAX)) == "3w5e11264sgsf~3w5e11264sgsf"
    text = channel_set_tag(("a", "b")) + "_3w5e11264sgsf~3w5e11264sgsf.0"
    assert parse_cursor(text, ("a", "b")) == {"a": (MAX, MAX), "b": ZERO}


def test_cursor_length_bound_from_the_docstring_holds_for_16_channels_with_max_ids() -> None:
    channels = channel_set(f"channel-{i:02d}" for i in range(16))
    text = cursor_for(channels, dict.fromkeys(channels, (MAX, MAX)))
    assert len(text) <= 8 + 28 * 16
    assert parse_cursor(text, channels) == dict.fromkeys(channels, (MAX, MAX))


@given(st.lists(channel_names, min_size=1, max_size=50, unique=True))
def test_tag_fits_the_eight_characters_the_bound_allows(names: list[str]) -> None:
    assert 1 <= len(channel_set_tag(channel_set(names))) <= 7


def test_single_channel_cursor_is_a_plain_stream_id() -> None:
    assert parse_cursor("1732700000000-5", ("prices",)) == {"prices": (1732700000000, 5)}


@pytest.mark.parametrize("text", ["garbage", "1-0-0", f"{MAX + 1}-0"])
def test_single_channel_refuses_anything_but_a_stream_id(text: str) -> None:
    assert_bad_cursor(text, ("prices",))


def test_single_channel_refuses_a_composite_cursor() -> None:
    assert_bad_cursor(format_cursor(channel_set_tag(("prices",)), ["5"]), ("prices",))


def bad_cursor_detail(text: str, channels: tuple[str, ...]) -> str:
    with pytest.raises(BadRequest) as caught:
        parse_cursor(text, channels)
    return caught.value.detail


TAG_AB = channel_set_tag(("a", "b"))


@pytest.mark.parametrize(
    ("text", "channels", "why"),
    [
        ("garbage", ("prices",), "expected a stream id such as 1732700000000-0"),
        ("nonsense", ("a", "b"), "expected a cursor issued by a stream of the same channels"),
        (channel_set_tag(("a", "c")) + "_1.2", ("a", "b"), "expected a cursor issued by a stream of the same channels"),
        (f"{TAG_AB}_1.2.3", ("a", "b"), "expected 2 positions"),
        (f"{TAG_AB}_1.A", ("a", "b"), "position 'A' is not base-36"),
        # The first '_' ends the tag: a later one is part of a position, so the tag is right and the position is not.
        (f"{TAG_AB}_1.2_3", ("a", "b"), "position '2_3' is not base-36"),
        (f"{TAG_AB}_3w5e11264sgsg.0", ("a", "b"), "position out of range"),
    ],
)
def test_bad_cursor_detail_says_why_it_was_refused(text: str, channels: tuple[str, ...], why: str) -> None:
    assert bad_cursor_detail(text, channels) == f"Last-Event-ID {text!r} does not parse: {why}"


def test_bad_cursor_detail_quotes_at_most_30_characters_of_a_bad_position() -> None:
    detail = bad_cursor_detail(f"{TAG_AB}_0.{'A' * 40}", ("a", "b"))
    assert detail.endswith(f"does not parse: position {'A' * 30!r} is not base-36")


def test_bad_cursor_detail_quotes_at_most_80_characters_of_the_input() -> None:
    with pytest.raises(BadRequest) as caught:
        parse_cursor("x" * 10_000, ("a", "b"))
    assert "x" * 80 in caught.value.detail
    assert "x" * 81 not in caught.value.detail
