"""Last-Event-ID values: a stream id for one channel, a composite cursor for several.

A single-channel stream uses the Redis Stream id itself (``1732700000000-0``).

A multi-channel stream needs one position per channel, so its id is a composite cursor::

    <tag>_<pos>.<pos>...      e.g.  1k3f9qz_m3gx4xs0.m3gx4xs5~2

- the channels of the request are de-duplicated and sorted; positions follow that order;
- ``tag`` is the base-36 CRC-32 of the sorted names, so a cursor is never applied to another set of channels;
- each position is ``base36(ms)`` then ``~base36(seq)`` when seq is not 0.

A cursor is at most 8 + 28 × channels characters (about 9 per channel for today's ids).
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Sequence

from gateway.errors import BadRequest

StreamId = tuple[int, int]

ZERO: StreamId = (0, 0)
_MAX = 2**64 - 1
MAX_STREAM_ID: StreamId = (_MAX, _MAX)
_STREAM_ID = re.compile(r"([0-9]{1,20})-([0-9]{1,20})")
_POSITION = re.compile(r"([0-9a-z]{1,13})(?:~([0-9a-z]{1,13}))?")
_DIGITS = "0123456789abcdefghijklmnopqrstuvwxyz"


def parse_stream_id(text: str) -> StreamId:
    match = _STREAM_ID.fullmatch(text)
    if match is None:
        raise ValueError(f"not a stream id: {text!r}")
    ms, seq = int(match[1]), int(match[2])
    if ms > _MAX or seq > _MAX:
        raise ValueError(f"stream id out of range: {text!r}")
    return ms, seq


def format_stream_id(stream_id: StreamId) -> str:
    return f"{stream_id[0]}-{stream_id[1]}"


def channel_set(channels: Sequence[str]) -> tuple[str, ...]:
    """The canonical order of a request's channels: unique and sorted."""
    return tuple(sorted(set(channels)))


def channel_set_tag(channels: tuple[str, ...]) -> str:
    return _base36(zlib.crc32("\n".join(channels).encode()))


def format_position(stream_id: StreamId) -> str:
    ms, seq = stream_id
    return _base36(ms) + (f"~{_base36(seq)}" if seq else "")


def format_cursor(tag: str, positions: Sequence[str]) -> str:
    return tag + "_" + ".".join(positions)


def parse_cursor(text: str, channels: tuple[str, ...]) -> dict[str, StreamId]:
    """Map each channel of ``channels`` (in canonical order) to its position in ``text``.

    Raises BadRequest (code ``bad_cursor``) for anything that is not a cursor issued for exactly these channels.
    """
    if len(channels) == 1:
        try:
            return {channels[0]: parse_stream_id(text)}
        except ValueError:
            raise _bad(text, "expected a stream id such as 1732700000000-0") from None
    tag, sep, body = text.partition("_")
    if not sep or tag != channel_set_tag(channels):
        raise _bad(text, "expected a cursor issued by a stream of the same channels")
    parts = body.split(".")
    if len(parts) != len(channels):
        raise _bad(text, f"expected {len(channels)} positions")
    positions: dict[str, StreamId] = {}
    for channel, part in zip(channels, parts, strict=True):
        match = _POSITION.fullmatch(part)
        if match is None:
            raise _bad(text, f"position {part[:30]!r} is not base-36")
        ms, seq = int(match[1], 36), int(match[2] or "0", 36)
        if ms > _MAX or seq > _MAX:
            raise _bad(text, "position out of range")
        positions[channel] = (ms, seq)
    return positions


def _bad(text: str, why: str) -> BadRequest:
    return BadRequest(f"Last-Event-ID {text[:80]!r} does not parse: {why}", code="bad_cursor")


def _base36(number: int) -> str:
    if number == 0:
        return "0"
    digits = []
    while number:
        number, rest = divmod(number, 36)
        digits.append(_DIGITS[rest])
    return "".join(reversed(digits))
