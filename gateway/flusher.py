"""Writes to many clients from one callback per turn of the event loop, instead of a task wake-up per client.

Waking each client's task for each message costs more than the write itself. So once a stream is live, the fan-out
only queues frames and marks the subscriber due; the flusher then calls the server's ``send`` for each due
subscriber and runs it as far as it goes without waiting, which for a socket that is not pushing back is all the
way. Only a ``send`` that must wait (the client's socket is full) is handed to the client's own task to finish.

A turn writes to at most ``SLICE`` subscribers and leaves the rest for the next turn, so that Redis and HTTP
traffic are read in between; events that arrive meanwhile join the frames of the subscribers still due, and go out
in the same write. Under load, writes carry more frames each; when idle, nothing waits.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Generator
from typing import TYPE_CHECKING, Any

from gateway.metrics import FANOUT_LAG_SECONDS, FRAMES_OUT

if TYPE_CHECKING:
    from gateway.subscriber import Subscriber

log = logging.getLogger("gateway.flusher")

# About a millisecond of writes: short enough for the loop to read publishes in between, long enough to amortise.
SLICE = 16

Blocked = tuple[Generator[Any, None, None], Any]
"""A started ``send`` that had to wait: the rest of the coroutine, and what it was waiting on."""


def send_now(send: Awaitable[None]) -> Blocked | None:
    """Run an awaitable until it completes or must wait; None if it completed."""
    steps = send.__await__()
    try:
        waiting_on = _released(steps.send(None))
    except StopIteration:
        return None
    return steps, waiting_on


async def finish(blocked: Blocked) -> None:
    """Drive a send that ``send_now`` started to its end, in the calling task."""
    steps, waiting_on = blocked
    while True:
        try:
            if waiting_on is None:  # a bare yield: the coroutine just gave the loop a turn
                await asyncio.sleep(0)
            else:
                await waiting_on
        except BaseException as exc:  # cancellation included: the send must see it, to clean up after itself
            try:
                waiting_on = _released(steps.throw(exc))
            except StopIteration:
                return
            continue
        try:
            waiting_on = _released(steps.send(None))
        except StopIteration:
            return


def _released(waiting_on: Any) -> Any:
    """Do what a task does with a future its coroutine yields: clear the flag that says it is being waited on.

    Left set, the flag makes the next ``await`` of that future fail ("await wasn't used with future").
    """
    if waiting_on is not None:
        waiting_on._asyncio_future_blocking = False
    return waiting_on


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
                frames += subscriber.write_now(now)
            except Exception:  # one broken stream must not stop the writes of the others
                log.exception("write failed for a stream of %s", ",".join(subscriber.channels))
                subscriber.close("error")
                continue
            if arrived is not None and (oldest is None or arrived < oldest):
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
