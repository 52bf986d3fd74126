"""gateway.fanout.stepping: awaitables run by hand, as far as they go, and finished or watched without a task of their
own."""

from __future__ import annotations

import asyncio

import pytest

from gateway.fanout.stepping import Watch, finish, send_now
from tests.fanout.test_flusher import Client, turn


async def test_send_now_runs_a_send_that_need_not_wait_to_its_end() -> None:
    client = Client()
    assert send_now(client.send({"body": b"x"})) is None
    assert client.written == [b"x"]


async def test_a_send_that_must_wait_is_finished_by_finish_in_the_calling_task() -> None:
    client = Client()
    client.full = asyncio.get_running_loop().create_future()
    blocked = send_now(client.send({"body": b"x"}))
    assert blocked is not None and client.written == []
    finishing = asyncio.create_task(finish(blocked))
    await turn()
    assert not finishing.done()
    client.full.set_result(None)
    await asyncio.wait_for(finishing, 5)
    assert client.written == [b"x"]


async def test_cancelling_finish_cancels_the_send_itself() -> None:
    cleaned_up = []

    async def send() -> None:
        try:
            await asyncio.get_running_loop().create_future()
        finally:
            cleaned_up.append(True)

    blocked = send_now(send())
    assert blocked is not None
    finishing = asyncio.create_task(finish(blocked))
    await turn()
    finishing.cancel()
    with pytest.raises(asyncio.CancelledError):
        await finishing
    assert cleaned_up == [True]


async def test_a_watch_hands_over_the_result_once_what_it_waits_on_is_done() -> None:
    results = []
    ready = asyncio.get_running_loop().create_future()

    async def two_waits() -> str:
        await asyncio.sleep(0)  # a bare yield
        return await ready

    Watch(two_waits(), results.append).start()
    await turn()
    assert results == []
    ready.set_result("done")
    await turn()
    assert results == ["done"]


async def test_a_watch_gives_none_when_the_awaitable_raises() -> None:
    results = []

    async def broken() -> str:
        await asyncio.sleep(0)
        raise RuntimeError("boom")

    Watch(broken(), results.append).start()
    for _ in range(3):
        await turn()
    assert results == [None]


async def test_cancelling_a_watch_runs_the_awaitables_clean_up_and_never_calls_back() -> None:
    results, cleaned_up = [], []
    never = asyncio.get_running_loop().create_future()

    async def waits() -> None:
        try:
            await never
        finally:
            cleaned_up.append(True)

    watch = Watch(waits(), results.append).start()
    watch.cancel()
    assert cleaned_up == [True]
    never.set_result(None)
    await turn()
    assert results == []
