"""Writes to many clients from one callback per turn of the event loop, instead of a task wake-up per client.

Waking each client's task for each message costs more than the write itself. So once a stream is live, the fan-out
only queues frames and marks the subscriber due; the flusher then calls the server's ``send`` for each due
subscriber and runs it as far as it goes without waiting, which for a socket that is not pushing back is all the
way. Only a ``send`` that must wait (the client's socket is full) is handed to the client's own task to finish (and,
with the plain write path, every write: see gateway.fanout.writer).

A turn writes to at most ``SLICE`` subscribers and leaves the rest for the next turn, so that Redis and HTTP
traffic are read in between; events that arrive meanwhile join the frames of the subscribers still due, and go out
in the same write. Under load, writes carry more frames each; when idle, nothing waits.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from typing import TYPE_CHECKING

from gateway.metrics import FANOUT_LAG_SECONDS, FRAMES_OUT

if TYPE_CHECKING:
    from gateway.fanout.subscriber import Subscriber

log = logging.getLogger("gateway.fanout.flusher")

# About a millisecond of writes: short enough for the loop to read publishes in between, long enough to amortise.
SLICE = 16


class Flusher:
    def __init__(self) -> None:
        self._due: deque[Subscriber] = deque()
        self._scheduled: asyncio.Handle | None = None

    def schedule(self, subscriber: Subscriber) -> None:
        self._due.append(subscriber)
        if self._scheduled is None:
            self._scheduled = asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._scheduled = None
        due = self._due
        now = time.monotonic()
        frames = 0
        oldest: float | None = None
        for _ in range(min(SLICE, len(due))):
            subscriber = due.popleft()
            arrived = subscriber.oldest_arrival
            try:
                written = subscriber.write_now(now)
            except Exception:  # one broken stream must not stop the writes of the others
                log.exception("write failed for a stream of %s", ",".join(subscriber.channels))
                subscriber.close("error")
                continue
            frames += written
            if written and arrived is not None and (oldest is None or arrived < oldest):
                oldest = arrived
        if due:
            self._scheduled = asyncio.get_running_loop().call_soon(self._flush)
        # Counted once a turn rather than once a write: a metric update costs about as much as a write's Python.
        if frames:
            FRAMES_OUT.inc(frames)
        if oldest is not None:
            FANOUT_LAG_SECONDS.observe(now - oldest)

    @property
    def due(self) -> int:
        return len(self._due)
