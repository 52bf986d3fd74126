"""An event as it travels through the gateway, with its SSE bytes built once at ingest.

The publish script wraps each event in a compact envelope before it PUBLISHes it::

    \\x00sse1\\n<stream id>\\n<event type or empty>\\n<data>

Any other Pub/Sub payload is a plain ``PUBLISH`` from another program: it is streamed as data with no id, since
it is not in the replay buffer.

Nothing read from Redis can break a stream: bytes that are not UTF-8 are replaced, and an event type that SSE cannot
carry (or that imitates the gateway's own ``gap``) is dropped, leaving an untyped event.
"""

from __future__ import annotations

import logging
import time

from gateway.cursor import StreamId, format_stream_id, parse_stream_id
from gateway.sse import data_lines, encode_event, event_type_problem

log = logging.getLogger("gateway.events")

ENVELOPE_MARK = b"\x00sse1\n"


class Event:
    """One message of one channel. ``frame`` is what a single-channel stream sends, to every client alike."""

    __slots__ = ("channel", "stream_id", "type", "data", "frame", "arrived", "_multi_body")

    def __init__(self, channel: str, stream_id: StreamId | None, event_type: str | None, data: str) -> None:
        if event_type is not None and event_type_problem(event_type):
            event_type = None
        self.channel = channel
        self.stream_id = stream_id
        self.type = event_type
        self.data = data
        event_id = None if stream_id is None else format_stream_id(stream_id)
        self.frame = encode_event(data, event=event_type, event_id=event_id)
        self.arrived = time.monotonic()  # for the fan-out lag metric
        self._multi_body: bytes | None = None

    @property
    def multi_body(self) -> bytes:
        """The frame for multi-channel streams, minus its per-connection ``id:`` line; built on first use."""
        if self._multi_body is None:
            name = self.channel if self.type is None else f"{self.channel}:{self.type}"
            self._multi_body = f"event: {name}\n".encode() + data_lines(self.data) + b"\n"
        return self._multi_body

    def __repr__(self) -> str:
        return f"Event({self.channel!r}, {self.stream_id!r}, {self.type!r}, {self.data[:40]!r})"


def decode_pubsub(channel: str, payload: bytes) -> Event | None:
    """An Event from a Pub/Sub payload: an envelope from the publish script, or a plain message.

    None for a damaged envelope, which is neither: it is logged and skipped.
    """
    if payload.startswith(ENVELOPE_MARK):
        head, _, rest = payload[len(ENVELOPE_MARK) :].partition(b"\n")
        event_type, _, data = rest.partition(b"\n")
        try:
            stream_id = parse_stream_id(head.decode())
        except ValueError:
            log.warning("skipped a damaged envelope on channel %s", channel)
            return None
        return Event(channel, stream_id, _text(event_type) or None, _text(data))
    return Event(channel, None, None, _text(payload))


def from_stream_entry(channel: str, entry_id: bytes | str, fields: dict[bytes, bytes]) -> Event:
    """An Event from a replay-buffer entry (fields ``e`` type, ``d`` data, ``p`` previous id)."""
    raw_id = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    event_type = _text(fields.get(b"e", b""))
    return Event(channel, parse_stream_id(raw_id), event_type or None, _text(fields.get(b"d", b"")))


def _text(raw: bytes) -> str:
    # Published data is UTF-8; a plain PUBLISH from elsewhere may not be, and must not break the stream.
    return raw.decode("utf-8", errors="replace")
