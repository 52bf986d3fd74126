"""The Broker: everything the gateway asks of Redis, one node or a cluster, behind one protocol.

The fan-out and the HTTP side talk only to this. Implementations: gateway.brokers.single (one Redis) and
gateway.brokers.cluster (Redis Cluster with sharded Pub/Sub); tests/brokers/test_contract.py runs the same tests on
both. Every Redis failure surfaces as RedisUnavailable, so callers handle one error family.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Protocol

from gateway.cursor import StreamId
from gateway.errors import GatewayError
from gateway.events import Event

# Entries read per backlog page: each page is written to the client before the next is read, bounding its memory.
BACKLOG_PAGE = 100

OnEvent = Callable[[Event], None]
# Called when a channel's live messages may have been missed (a reconnect, a topology change, a message seen missing
# by its previous id): the hub reads the buffer then, up to the given id if one is given, before any newer live
# event of that channel is delivered.
OnCatchUp = Callable[[str, StreamId | None], Awaitable[None]]


class Broker(Protocol):
    async def publish(self, channel: str, data: str, event_type: str | None = None) -> str:
        """Buffer the event and publish it live, atomically; its stream id. Needs no start().

        Raises BadRequest for an event type that could break SSE framing, RedisUnavailable when Redis fails.
        """
        ...

    async def publish_many(self, events: Sequence[tuple[str, str, str | None]]) -> list[str | GatewayError]:
        """Publish ``(channel, data, event type)`` events, in order per channel: each one's stream id, or the error
        that kept it out (BadRequest, RedisUnavailable). Needs no start()."""
        ...

    async def tail(self, channel: str) -> StreamId:
        """The id of the newest buffered event, or 0-0 for an empty channel."""
        ...

    def backlog(self, channel: str, after: StreamId, until: StreamId | None = None) -> AsyncIterator[list[Event]]:
        """Pages of buffered events newer than ``after`` (and none newer than ``until``), oldest first, each with
        its previous id."""
        ...

    async def buffered(self, channel: str) -> bool:
        """Whether the channel has a buffer at all: a quiet channel's expires."""
        ...

    async def keep_ticket(self, digest: str, grant: bytes, ttl_ms: int) -> None:
        """Store a stream ticket's grant under its digest for ``ttl_ms`` (gateway.security.tickets)."""
        ...

    async def ticket_grant(self, digest: str) -> bytes | None:
        """A stream ticket's grant, or None when it is unknown or has expired."""
        ...

    async def start(self, on_event: OnEvent, on_catch_up: OnCatchUp) -> None:
        """Begin live delivery: ``on_event`` for every message of a subscribed channel, in order per channel."""
        ...

    def subscribe(self, channel: str) -> asyncio.Event:
        """Count one more local subscriber; the event is set once Redis has confirmed the subscription."""
        ...

    def unsubscribe(self, channel: str) -> None:
        """Count one less; the channel is unsubscribed a moment after its last subscriber leaves."""
        ...

    @property
    def live(self) -> bool:
        """Whether live delivery works now: every connection that a subscribed channel needs is up."""
        ...

    async def ping(self) -> bool:
        """Whether Redis answers (every primary, on a cluster)."""
        ...

    async def close(self) -> None:
        """Stop live delivery and close every connection, in bounded time."""
        ...
