"""The bytes of a span of replayed events, joined once for all the streams that replay that same span.

In a reconnect storm thousands of clients resume one channel from about the same id, and each would queue the
span's frames one by one (a step per event per client, each checking the event against the client's cursor) and
then join them into its write. A stream on one channel, without conflation, sends the frames unchanged and in order,
so the join is the same for all of them and is made once: a span is named by its channel and its first and last
ids, since a channel's buffer holds one event per id and a span (from the ring, or one page read from Redis) holds
every event between the two.

The spans kept are bounded in number and in bytes; the oldest go first. Measured by ``python -m bench.storm
--scenarios behind`` against ``--gateway-env SSE_GATEWAY_SHARED_REPLAY_BYTES=0``: see the README, *Performance*.
"""

from __future__ import annotations

from collections import OrderedDict

from gateway.cursor import StreamId
from gateway.events import Event

MAX_SPANS = 64
MAX_BYTES = 16 * 1024 * 1024


class JoinedSpans:
    def __init__(self, *, max_spans: int = MAX_SPANS, max_bytes: int = MAX_BYTES) -> None:
        self._spans: OrderedDict[tuple[str, StreamId | None, StreamId | None], bytes] = OrderedDict()
        self._max_spans = max_spans
        self._max_bytes = max_bytes
        self.bytes = 0

    def join(self, channel: str, events: list[Event]) -> bytes:
        """The frames of ``events`` (a whole span of ``channel``, oldest first), as one bytes."""
        if len(events) == 1:
            return events[0].frame
        key = (channel, events[0].stream_id, events[-1].stream_id)
        body = self._spans.get(key)
        if body is None:
            body = b"".join([event.frame for event in events])
            if len(body) <= self._max_bytes:
                self._spans[key] = body
                self.bytes += len(body)
                while len(self._spans) > self._max_spans or self.bytes > self._max_bytes:
                    self.bytes -= len(self._spans.popitem(last=False)[1])
        return body

    def __len__(self) -> int:
        return len(self._spans)
