"""Channel names, and the Redis keys and Pub/Sub channels behind them: the only place that spells them.

A channel ``stocks`` with the default prefix ``sse:`` lives in Redis as

    sse:{stocks}          the Pub/Sub channel live events are published to
    sse:{stocks}:buffer   the Stream holding the replay buffer
    stocks                its bare channel, heard too when it is a raw channel (SSE_GATEWAY_RAW_CHANNELS), for the
                          programs that already PUBLISH there (gateway.brokers.bare)

The braces are a hash tag: in Redis Cluster both names map to the same slot, so one script can touch both. They are
also why a bare channel can never be one of the gateway's own, for any prefix, the empty one included: every name
the gateway publishes to holds a ``{``, and no channel name may (``{stocks}`` against ``stocks``). So a message is
heard on one of the two, never on both, and nothing sent to a bare channel can pass for an envelope.
"""

from __future__ import annotations

import fnmatch
import functools
import re
from collections.abc import Iterable
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


def channel_matches(channel: str, globs: Iterable[str]) -> bool:
    """Whether the channel matches one of the globs (``*``, ``?``, ``[...]``), case-sensitively, as a whole name.

    The rule of every channel-glob setting: public channels, conflated channels, raw channels.
    """
    return any(fnmatch.fnmatchcase(channel, glob) for glob in globs)


@dataclass(frozen=True)
class Naming:
    prefix: str = "sse:"
    # Globs of the raw channels: those also heard on their bare Redis channel.
    raw_globs: tuple[str, ...] = ()

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

    def bare_channel(self, channel: str) -> str | None:
        """The bare Redis channel also heard for a raw channel (its very name), or None for any other channel."""
        return channel if _raw(self.raw_globs, channel) else None

    def channel_of_bare(self, bare_channel: str) -> str | None:
        """The raw channel behind a bare Redis channel name, or None if it is not the bare channel of one."""
        return bare_channel if _raw(self.raw_globs, bare_channel) else None


@functools.lru_cache(maxsize=4096)
def _raw(globs: tuple[str, ...], name: str) -> bool:
    # Cached: asked for every message of a bare channel. Only a valid channel name has a bare channel, which keeps
    # every bare name free of braces, whatever the globs say (``*`` matches ``{x}`` too).
    valid = name not in RESERVED_CHANNELS and CHANNEL_PATTERN.fullmatch(name) is not None
    return valid and channel_matches(name, globs)
