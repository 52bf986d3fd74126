"""Stopping a background task in bounded time, even when a cancellation is lost on the way.

On Python 3.11, ``asyncio.wait_for`` returns the inner result and drops a ``cancel()`` that arrives in the same loop
turn as that result (CPython gh-86296, fixed in 3.12 by rebuilding ``wait_for`` on ``asyncio.timeout``). redis-py
wraps every socket write in ``wait_for`` when the connection has a socket timeout, so a task cancelled just as its
command is written carries on as if nothing had happened: a shutdown that cancels once and then awaits the task
waits for ever. Under uvloop a write completes in the same turn so often that a start followed by a stop a few
milliseconds later hit it almost every time.

So a stop here is: ask the task's own loop to finish (the caller's ``stopping`` flag, checked at least once a
second), cancel, and cancel again while it has not ended, for a bounded time; then run ``on_stuck`` (close the
connection under the reader, so that any read fails at once) and wait once more, still bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

log = logging.getLogger("gateway.tasks")

# How long one cancel is given before it is repeated: long enough for the task's own cleanup (closing a connection)
# to finish, short enough that a lost cancel costs a shutdown little.
RECANCEL_AFTER = 0.25
STOP_GRACE = 2.0


async def stop_task(
    task: asyncio.Task[object] | None,
    *,
    grace: float = STOP_GRACE,
    on_stuck: Callable[[], Awaitable[object]] | None = None,
) -> bool:
    """Cancel ``task`` and wait, at most about ``2 * grace`` seconds, for it to end; True if it ended.

    Never raises for the task's own outcome: whatever it raised on its way out is logged, not propagated, since a
    stop must go on to stop the rest.
    """
    if task is None:
        return True
    loop = asyncio.get_running_loop()
    deadline = loop.time() + grace
    while not task.done() and loop.time() < deadline:
        task.cancel()
        await asyncio.wait({task}, timeout=min(RECANCEL_AFTER, max(0.0, deadline - loop.time())))
    if not task.done() and on_stuck is not None:
        log.warning("task %s did not stop within %.1fs; closing its connection", task.get_name(), grace)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(on_stuck(), grace)
        task.cancel()
        await asyncio.wait({task}, timeout=grace)
    if not task.done():
        log.error("task %s did not stop; leaving it behind", task.get_name())
        return False
    if not task.cancelled() and (error := task.exception()) is not None:
        log.warning("task %s ended with %r while stopping", task.get_name(), error)
    return True


async def stop_tasks(tasks: list[asyncio.Task[object]], *, grace: float = STOP_GRACE) -> bool:
    """Stop several tasks at once, each as ``stop_task`` does; True if every one ended."""
    results = await asyncio.gather(*(stop_task(task, grace=grace) for task in tasks))
    return all(results)
