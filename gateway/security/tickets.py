"""Stream tickets: a short-lived, opaque stand-in for a credential in a stream's URL.

A page that can send neither a cookie nor a header would put its JWT in ``?access_token=``, where proxy logs and
browser history keep it. Instead it asks ``POST /tickets`` (gateway.http.tickets), with its credential in a header,
for a ticket naming the channels it wants, and opens ``/events?...&ticket=...``. A ticket:

- is 256 random bits, of which Redis keeps only the SHA-256: a copy of Redis's keys opens no stream;
- lives in Redis, so every gateway on that Redis accepts it, for ``ticket_ttl`` seconds at most and never past the
  credential's own expiry;
- grants subscribing to its channels and nothing else (no publishing, and no further tickets);
- may be used again until it expires, since a browser's own reconnects reuse the stream's URL;
- opens a stream that ends when the credential it was made from would have ended it.
"""

from __future__ import annotations

import hashlib
import json
import math
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from gateway.errors import Unauthorized
from gateway.security.auth import Grant

TICKET_BYTES = 32
QUERY_PARAMETER = "ticket"


class TicketStore(Protocol):
    """What tickets need of Redis (gateway.brokers.buffer implements it for both brokers)."""

    async def keep_ticket(self, digest: str, grant: bytes, ttl_ms: int) -> None: ...

    async def ticket_grant(self, digest: str) -> bytes | None: ...


@dataclass(frozen=True)
class Ticket:
    value: str
    channels: tuple[str, ...]
    expires_in: float  # seconds


class Tickets:
    def __init__(self, store: TicketStore, ttl: float) -> None:
        self.store = store
        self.ttl = ttl

    async def issue(self, channels: Sequence[str], credential_expires_at: float | None, *, keep: bool = True) -> Ticket:
        """A new ticket for ``channels``, which the caller has checked the credential allows. Raises Unauthorized
        for a credential that has expired, RedisUnavailable when Redis fails.

        ``keep``: False where no stream will ask for it (authentication off): nothing is written to Redis."""
        lifetime = self.ttl
        if credential_expires_at is not None:
            lifetime = min(lifetime, credential_expires_at - time.time())
        if lifetime <= 0:
            raise Unauthorized("the token has expired")
        value = secrets.token_urlsafe(TICKET_BYTES)
        grant = {"channels": list(channels), "expires_at": credential_expires_at}
        if keep:
            ttl_ms = max(1, math.floor(lifetime * 1000))
            await self.store.keep_ticket(_digest(value), json.dumps(grant).encode(), ttl_ms)
        return Ticket(value, tuple(channels), lifetime)

    async def redeem(self, value: str) -> Grant:
        """The grant of a ticket; Unauthorized for one that is unknown or has expired."""
        stored = await self.store.ticket_grant(_digest(value)) if value else None
        if stored is None:
            raise Unauthorized("the ticket is not valid or has expired: ask POST /tickets for a new one")
        grant = json.loads(stored)
        # The channel names were validated when the ticket was made, and hold no glob characters: each matches
        # only itself.
        return Grant(subscribe=tuple(grant["channels"]), expires_at=grant["expires_at"])


def _digest(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()
