"""stop_task: a background task is stopped in bounded time, also when a cancellation is lost on the way."""

from __future__ import annotations

import asyncio
import sys

from gateway.tasks import stop_task

PYTHON_LOSES_CANCEL_IN_WAIT_FOR = sys.version_info < (3, 12)


async def _writes_until_cancelled(results: list[asyncio.Future[None]]) -> None:
    """Stands for redis-py's write path: every step awaits ``wait_for`` on a future the caller resolves."""
    loop = asyncio.get_running_loop()
    while True:
        step = loop.create_future()
        results.append(step)
        await asyncio.wait_for(step, 10)


async def _until_steps(results: list[asyncio.Future[None]], count: int) -> None:
    while len(results) < count:
        await asyncio.sleep(0)


async def test_a_cancel_meeting_a_wait_for_result_is_lost_on_this_python():
    # The premise of gateway.tasks, checked against the running interpreter rather than taken on trust.
    results: list[asyncio.Future[None]] = []
    task = asyncio.create_task(_writes_until_cancelled(results))
    await _until_steps(results, 1)
    results[-1].set_result(None)
    task.cancel()  # in the same turn as the result: 3.11's wait_for returns the result and drops this
    await asyncio.wait({task}, timeout=0.5)
    assert task.done() is not PYTHON_LOSES_CANCEL_IN_WAIT_FOR
    task.cancel()
    await asyncio.wait({task}, timeout=5)
    assert task.cancelled()


async def test_stop_task_ends_a_task_whose_first_cancel_is_lost():
    results: list[asyncio.Future[None]] = []
    task = asyncio.create_task(_writes_until_cancelled(results))
    await _until_steps(results, 1)
    results[-1].set_result(None)
    assert await stop_task(task, grace=5) is True
    assert task.cancelled()


async def test_stop_task_closes_the_connection_of_a_task_that_ignores_every_cancel():
    closed = asyncio.Event()

    async def stubborn() -> str:
        while not closed.is_set():  # like a reader whose loop only ends when its socket fails
            try:
                await closed.wait()
            except asyncio.CancelledError:
                continue
        return "ended by its closed connection"

    async def close() -> None:
        closed.set()

    task = asyncio.create_task(stubborn())
    await asyncio.sleep(0)
    loop = asyncio.get_running_loop()
    started = loop.time()
    assert await stop_task(task, grace=0.5, on_stuck=close) is True
    assert task.result() == "ended by its closed connection"
    assert loop.time() - started < 5


async def test_stop_task_gives_up_in_bounded_time_on_a_task_that_cannot_be_stopped():
    release = asyncio.Event()

    async def unstoppable() -> None:
        while not release.is_set():
            try:
                await release.wait()
            except asyncio.CancelledError:
                continue

    task = asyncio.create_task(unstoppable())
    await asyncio.sleep(0)
    loop = asyncio.get_running_loop()
    started = loop.time()
    assert await stop_task(task, grace=0.3) is False
    assert loop.time() - started < 5
    release.set()
    await task


async def test_stop_task_does_not_raise_what_the_task_raised_on_its_way_out():
    async def fails_when_cancelled() -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            raise RuntimeError("cleanup failed") from None

    task = asyncio.create_task(fails_when_cancelled())
    await asyncio.sleep(0)
    assert await stop_task(task) is True
    assert isinstance(task.exception(), RuntimeError)


async def test_stop_task_of_none_or_a_finished_task_returns_at_once():
    async def quick() -> int:
        return 1

    task = asyncio.create_task(quick())
    await task
    assert await stop_task(None) is True
    assert await stop_task(task) is True
    assert task.result() == 1
