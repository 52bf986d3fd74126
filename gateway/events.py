"""An event as it travels through the gateway, with its SSE bytes built once at ingest.

Brokers make them (see gateway.brokers.envelope), from a live message or a buffered entry. An event type that SSE
cannot carry (or that imitates the gateway's own ``gap``) is dropped, leaving an untyped event.
"""

from __future__ import annotations

import time

from gateway.cursor import StreamId, format_stream_id
from gateway.sse import data_lines, encode_event, event_type_problem


class Event:
    """One message of one channel. ``frame`` is what a single-channel stream sends, to every client alike.

    ``stream_id`` is None for a message that is not in the replay buffer (a plain PUBLISH from another program).
    ``previous`` is the id of the entry buffered before it: 0-0 for the first of its stream, None when not known.
    A live event whose ``previous`` is not the last id heard on its channel shows that a message was missed.
    """

    __slots__ = ("channel", "stream_id", "previous", "type", "data", "frame", "arrived", "_multi_body")

    def __init__(
        self,
        channel: str,
        stream_id: StreamId | None,
        event_type: str | None,
        data: str,
        previous: StreamId | None = None,
    ) -> None:
        if event_type is not None and event_type_problem(event_type):
            event_type = None
        self.channel = channel
        self.stream_id = stream_id
        self.previous = previous
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
