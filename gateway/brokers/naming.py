"""Channel names, and the Redis keys and Pub/Sub channels behind them: the only place that spells them.

A channel ``stocks`` with the default prefix ``sse:`` lives in Redis as

    sse:{stocks}          the Pub/Sub channel live events are published to
    sse:{stocks}:buffer   the Stream holding the replay buffer

The braces are a hash tag: in Redis Cluster both names map to the same slot, so one script can touch both.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from gateway.errors import BadRequest

CHANNEL_PATTERN = re.compile(r"[A-Za-z0-9_.\-]{1,64}")
# Multi-channel streams name their in-band gap events "gap", so no channel may be called that.
RESERVED_CHANNELS = frozenset({"gap"})


def validate_channel(name: str) -> str:
    if not CHANNEL_PATTERN.fullmatch(name):
        raise BadRequest(
            f"channel {name[:80]!r} must be 1-64 characters of A-Z, a-z, 0-9, '_', '.', '-'", code="bad_channel"
        )
    if name in RESERVED_CHANNELS:
        raise BadRequest(f"channel name {name!r} is reserved", code="bad_channel")
    return name


@dataclass(frozen=True)
class Naming:
    prefix: str = "sse:"

    def pubsub_channel(self, channel: str) -> str:
        return f"{self.prefix}{{{channel}}}"

    def stream_key(self, channel: str) -> str:
        return f"{self.prefix}{{{channel}}}:buffer"

    def ticket_key(self, digest: str) -> str:
        """A stream ticket's key (gateway.security.tickets); no braces, so it is never a channel's."""
        return f"{self.prefix}ticket:{digest}"

    def channel_of(self, pubsub_channel: str) -> str | None:
        """The gateway channel behind a Pub/Sub channel name, or None if it is not one of ours."""
        head = self.prefix + "{"
        if pubsub_channel.startswith(head) and pubsub_channel.endswith("}"):
            return pubsub_channel[len(head) : -1]
        return None
