"""Running an awaitable without a task of its own, for work done once per client where a task costs too much.

A task per step means a wake-up through the event loop per step. Stepping the awaitable by hand, as a task would,
runs it right away as far as it goes: ``send_now`` writes without waiting when the socket takes the bytes, and a
``Watch`` is told of a client's disconnect by callbacks on the futures it waits on rather than by a task kept per
stream.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Generator
from typing import Any

Blocked = tuple[Generator[Any, None, None], Any]
"""A started ``send`` that had to wait: the rest of the coroutine, and what it was waiting on."""

NOT_STARTED = object()  # what a Blocked "waits on" before its first step


def unstarted(send: Awaitable[None]) -> Blocked:
    """An awaitable not run at all yet, for ``finish`` to run from its start."""
    return send.__await__(), NOT_STARTED


def send_now(send: Awaitable[None]) -> Blocked | None:
    """Run an awaitable until it completes or must wait; None if it completed."""
    steps = send.__await__()
    try:
        waiting_on = _released(steps.send(None))
    except StopIteration:
        return None
    return steps, waiting_on


async def finish(blocked: Blocked) -> None:
    """Drive a send that ``send_now`` started (or ``unstarted`` holds) to its end, in the calling task."""
    steps, waiting_on = blocked
    while True:
        try:
            if waiting_on is NOT_STARTED:
                pass
            elif waiting_on is None:  # a bare yield: the coroutine just gave the loop a turn
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


class Watch:
    """Runs an awaitable to its end from callbacks, then hands its result (None if it raised) to ``then``."""

    __slots__ = ("_steps", "_then")

    def __init__(self, awaitable: Awaitable[Any], then: Callable[[Any], None]) -> None:
        self._steps: Generator[Any, None, Any] | None = awaitable.__await__()
        self._then = then

    def start(self) -> Watch:
        """Run the awaitable as far as it goes now (``then`` may be called before this returns)."""
        self._step()
        return self

    def _step(self, _: object = None) -> None:
        steps = self._steps
        if steps is None:
            return
        try:
            waiting_on = _released(steps.send(None))
        except StopIteration as end:
            self._steps = None
            self._then(end.value)
            return
        except Exception:  # noqa: BLE001 - whatever broke, the watched thing is over
            self._steps = None
            self._then(None)
            return
        if waiting_on is None:
            asyncio.get_running_loop().call_soon(self._step)
        else:
            waiting_on.add_done_callback(self._step)

    def cancel(self) -> None:
        """Stop watching: the awaitable is closed, so its own clean-up runs now."""
        steps, self._steps = self._steps, None
        if steps is not None:
            steps.close()
