"""What a message another program PUBLISHes to a raw channel's bare name becomes: data, streamed live, or nothing.

With ``SSE_GATEWAY_RAW_CHANNELS=stocks``, the upstream (gateway.brokers.upstream) subscribes to the bare Redis channel
``stocks`` beside the gateway's own ``sse:{stocks}`` (gateway.brokers.naming), for as long as the channel has local
subscribers, and hands each message of it here. Such an event has no id: it is not in the replay buffer, so a client
that was away misses it. Whatever the payload holds is data (gateway.brokers.envelope.decode_bare): an envelope is not
read as one, bytes that are not UTF-8 are replaced, and the SSE encoder gives every line its own ``data:`` line, so
no CR, LF or NUL can forge a field. A payload over the body limit, which no publish through the gateway may pass, is
dropped and counted in ``sse_raw_messages_dropped_total{reason="too_large"}``.
"""

from __future__ import annotations

import logging
import time

from gateway.brokers.envelope import decode_bare
from gateway.events import Event
from gateway.metrics import RAW_MESSAGES_DROPPED

log = logging.getLogger("gateway.brokers.bare")

# A feed that sends oversized messages sends them all day: one warning this often at most, with the count.
DROP_LOG_INTERVAL = 60.0


class BareMessages:
    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._dropped_unlogged = 0
        self._logged_at: float | None = None

    def event(self, channel: str, payload: bytes) -> Event | None:
        """The event of a bare channel's message, or None when it is dropped (counted, and logged now and then)."""
        if len(payload) > self.max_bytes:
            self._drop(channel, len(payload))
            return None
        return decode_bare(channel, payload)

    def _drop(self, channel: str, size: int) -> None:
        RAW_MESSAGES_DROPPED.labels("too_large").inc()
        self._dropped_unlogged += 1
        now = time.monotonic()
        if self._logged_at is not None and now - self._logged_at < DROP_LOG_INTERVAL:
            return
        log.warning(
            "dropped a %d-byte message on bare channel %s: over the body limit of %d bytes (%d dropped since the "
            "last such warning; at most one a minute, see sse_raw_messages_dropped_total)",
            size,
            channel,
            self.max_bytes,
            self._dropped_unlogged,
        )
        self._logged_at, self._dropped_unlogged = now, 0
