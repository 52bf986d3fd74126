"""gateway.replay.trimmed_after: is there a gap between a client's cursor and the first entry still buffered?"""

from __future__ import annotations

import pytest

from gateway.cursor import ZERO
from gateway.replay import trimmed_after


def entry(entry_id: str, previous: str) -> tuple[bytes, dict[bytes, bytes]]:
    return entry_id.encode(), {b"p": previous.encode(), b"e": b"", b"d": b"x"}


def test_position_before_a_trimmed_first_entry_is_a_gap() -> None:
    assert trimmed_after((5, 0), entry("20-0", "10-0")) == (20, 0)


def test_position_equal_to_the_previous_id_is_no_gap() -> None:
    assert trimmed_after((10, 0), entry("20-0", "10-0")) is None


def test_position_between_previous_and_first_is_no_gap() -> None:
    # The cursor is not an id of this stream, but nothing was written between it and the first entry.
    assert trimmed_after((15, 0), entry("20-0", "10-0")) is None


def test_position_one_sequence_before_previous_is_a_gap() -> None:
    assert trimmed_after((10, 0), entry("10-2", "10-1")) == (10, 2)


def test_first_entry_of_its_stream_from_zero_is_no_gap() -> None:
    assert trimmed_after(ZERO, entry("20-0", "")) is None


def test_first_entry_of_its_stream_from_a_non_zero_position_is_a_gap() -> None:
    # The client knew an older stream under this name (deleted, or another server): its events are gone.
    assert trimmed_after((5, 0), entry("20-0", "")) == (20, 0)


def test_first_entry_without_a_p_field_counts_as_first_of_its_stream() -> None:
    assert trimmed_after((5, 0), (b"20-0", {b"d": b"x"})) == (20, 0)
    assert trimmed_after(ZERO, (b"20-0", {b"d": b"x"})) is None


def test_zero_position_after_a_trim_is_a_gap() -> None:
    assert trimmed_after(ZERO, entry("20-0", "10-0")) == (20, 0)


@pytest.mark.parametrize("position", [(20, 0), (20, 1), (30, 0)])
def test_position_at_or_after_the_first_entry_is_never_a_gap(position: tuple[int, int]) -> None:
    assert trimmed_after(position, entry("20-0", "10-0")) is None
    assert trimmed_after(position, entry("20-0", "")) is None
