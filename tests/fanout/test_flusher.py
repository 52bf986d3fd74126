"""gateway.fanout.flusher with real subscribers: one loop turn writes to many, and a write that must wait is handed
over."""

from __future__ import annotations

import asyncio
import time

import pytest

from gateway.events import Event
from gateway.fanout import flusher
from gateway.fanout.flusher import Flusher
from gateway.fanout.subscriber import Subscriber
from gateway.fanout.writer import SteppedWriter


def ev(ms: int) -> Event:
    return Event("a", (ms, 0), None, f"event-{ms}")


class Client:
    """The server side of one connection, as the ASGI send sees it: writes land in ``written``.

    While ``full`` is set a send waits, as uvicorn's does while the socket pushes back.
    """

    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.full: asyncio.Future[None] | None = None

    async def send(self, message: dict) -> None:
        if self.full is not None:
            await self.full
        self.written.append(message["body"])


def live_subscriber(client: Client, hub: Flusher, **bounds: int) -> Subscriber:
    subscriber = Subscriber(["a"], max_events=bounds.get("max_events", 100), max_bytes=10**6)
    subscriber.start_at({"a": (0, 0)})
    subscriber.go_live()
    subscriber.go_direct(SteppedWriter(client.send), hub.schedule)
    return subscriber


async def turn() -> None:
    """Let the loop run the callbacks scheduled so far (one flush turn)."""
    await asyncio.sleep(0)


async def test_offers_are_written_on_the_next_turn_as_one_write_per_subscriber() -> None:
    hub = Flusher()
    clients = [Client() for _ in range(3)]
    subscribers = [live_subscriber(client, hub) for client in clients]
    for event in (ev(1), ev(2)):
        for subscriber in subscribers:
            subscriber.offer(event)
    assert all(client.written == [] for client in clients)
    await turn()
    for client in clients:
        assert client.written == [ev(1).frame + ev(2).frame]


async def test_a_turn_writes_one_slice_and_later_events_join_the_writes_still_due(monkeypatch) -> None:
    monkeypatch.setattr(flusher, "SLICE", 2)
    hub = Flusher()
    clients = [Client() for _ in range(5)]
    subscribers = [live_subscriber(client, hub) for client in clients]
    for subscriber in subscribers:
        subscriber.offer(ev(1))
    await turn()
    assert [len(client.written) for client in clients] == [1, 1, 0, 0, 0]
    for subscriber in subscribers:  # arrives while three subscribers are still due
        subscriber.offer(ev(2))
    for _ in range(4):
        await turn()
    assert [client.written for client in clients[:2]] == [[ev(1).frame, ev(2).frame]] * 2
    assert [client.written for client in clients[2:]] == [[ev(1).frame + ev(2).frame]] * 3
    assert hub.due == 0


async def test_a_failing_send_closes_only_its_own_stream() -> None:
    hub = Flusher()

    async def broken(message: dict) -> None:
        raise RuntimeError("boom")

    good_client = Client()
    bad = live_subscriber(Client(), hub)
    bad.go_direct(SteppedWriter(broken), hub.schedule)
    good = live_subscriber(good_client, hub)
    for subscriber in (bad, good):
        subscriber.offer(ev(1))
    await turn()
    assert bad.close_reason == "error"
    assert good.close_reason is None and good_client.written == [ev(1).frame]


async def test_a_blocked_write_goes_to_the_clients_task_and_what_queued_meanwhile_follows_in_order() -> None:
    hub = Flusher()
    client = Client()
    client.full = asyncio.get_running_loop().create_future()
    subscriber = live_subscriber(client, hub)
    subscriber.offer(ev(1))
    await turn()
    assert subscriber.blocked is not None and subscriber.writing
    await asyncio.wait_for(subscriber.wait(), 5)  # the client's task is woken for it
    subscriber.offer(ev(2))
    subscriber.offer(ev(3))
    await turn()
    assert client.written == []  # nothing overtakes the blocked write
    finishing = asyncio.create_task(subscriber.finish_write())
    client.full.set_result(None)
    client.full = None
    await asyncio.wait_for(finishing, 5)
    assert not subscriber.writing and subscriber.blocked is None
    await turn()
    assert client.written == [ev(1).frame, ev(2).frame + ev(3).frame]


async def test_the_tick_cuts_off_a_blocked_write_that_takes_too_long() -> None:
    hub = Flusher()
    client = Client()
    client.full = asyncio.get_running_loop().create_future()
    subscriber = live_subscriber(client, hub)

    async def clients_task() -> None:  # what EventStream.run does once live
        while subscriber.close_reason is None:
            await subscriber.wait()
            await subscriber.finish_write()

    subscriber.writer = task = asyncio.create_task(clients_task())
    subscriber.offer(ev(1))
    await turn()
    await turn()  # the task took the blocked write over and waits in it
    assert subscriber.writing and not task.done()
    subscriber.tick(subscriber.write_started + 29, time.time())
    assert subscriber.close_reason is None
    subscriber.tick(subscriber.write_started + 31, time.time())
    assert subscriber.close_reason == "stalled" and subscriber.writer_cancelled
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 5)
    assert client.written == []
