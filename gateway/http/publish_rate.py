"""Per-process limits that protect the gateway: open streams, and publishes per client IP.

Each limit answers in the way that suits its clients. A browser's EventSource gives up for good on any status but
200, so a stream over the connection limit is answered 200 with a long, jittered ``retry:`` and ended at once: the
browser comes back later by itself. Publishers are programs, so a publish over the rate gets 429 and Retry-After.
"""

from __future__ import annotations

import time

from gateway.errors import TooManyRequests

_MAX_TRACKED_CLIENTS = 10_000


class PublishRate:
    """A token bucket per client IP: ``rate`` publishes a second, in bursts of up to ``burst``."""

    def __init__(self, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = max(burst, 1)
        self._buckets: dict[str, tuple[float, float]] = {}  # ip -> (tokens, when)

    def take(self, client: str) -> None:
        """Spend one token of ``client``; raises TooManyRequests when there is none. A rate of 0 is no limit."""
        if self.rate <= 0:
            return
        now = time.monotonic()
        tokens, when = self._buckets.get(client, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - when) * self.rate)
        if tokens < 1:
            self._buckets[client] = (tokens, now)
            raise TooManyRequests(
                f"more than {self.rate:g} publishes a second from {client}", retry_after=(1 - tokens) / self.rate
            )
        self._buckets[client] = (tokens - 1, now)
        if len(self._buckets) > _MAX_TRACKED_CLIENTS:
            self._forget_full_buckets(now)

    def _forget_full_buckets(self, now: float) -> None:
        full_after = self.burst / self.rate
        self._buckets = {ip: (t, w) for ip, (t, w) in self._buckets.items() if now - w < full_after}
