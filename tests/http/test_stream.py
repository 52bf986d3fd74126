"""The SSE response under a client that stops reading: it is evicted, others are not held up, and it resumes."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator

import httpx
import pytest

from gateway.http.stream import STREAM_HOST, StreamHost
from sse_gateway_client import SSEParser
from tests.servers import GatewayProcess, RedisProcess, wait_until
from tests.streams import open_stream, publish, publish_many, recv_until, stalled_request
from tests.test_metrics import _value


@pytest.fixture(scope="module")
def small_client_buffer_gateway(redis_server) -> Iterator[GatewayProcess]:
    env = {"SSE_GATEWAY_CLIENT_BUFFER_EVENTS": "16", "SSE_GATEWAY_CLIENT_BUFFER_BYTES": "262144"}
    process = GatewayProcess(redis_server.url, env=env).start()
    yield process
    process.stop()


@pytest.fixture(scope="module")
def large_client_buffer_gateway(redis_server) -> Iterator[GatewayProcess]:
    env = {"SSE_GATEWAY_CLIENT_BUFFER_EVENTS": "4096", "SSE_GATEWAY_CLIENT_BUFFER_BYTES": str(64 << 20)}
    process = GatewayProcess(redis_server.url, env=env).start()
    yield process
    process.stop()


def _read_to_end(sock: socket.socket) -> bytes:
    sock.settimeout(10)
    received = bytearray()
    while chunk := sock.recv(65536):
        received += chunk
    return bytes(received)


def _dechunk(raw: bytes) -> bytes:
    _, _, body = raw.partition(b"\r\n\r\n")
    out = bytearray()
    while body:
        size_line, _, rest = body.partition(b"\r\n")
        size = int(size_line, 16)
        if size == 0:
            break
        out += rest[:size]
        body = rest[size + 2 :]
    return bytes(out)


@pytest.mark.timeout(90)
async def test_stalled_client_is_evicted_while_others_get_everything_and_it_resumes(
    small_client_buffer_gateway, channel
):
    url = small_client_buffer_gateway.url
    stalled = stalled_request(small_client_buffer_gateway.port, f"/events/{channel}")
    opening = bytearray()
    # Its starting position is fixed once its opening lines arrive; from then on it reads nothing.
    await asyncio.to_thread(recv_until, stalled, b"\nretry:", opening)
    payloads = [f"{i:04d}:" + "x" * 16000 for i in range(400)]
    async with open_stream(f"{url}/events/{channel}") as healthy:
        await healthy.read_raw_until(b"retry:")
        ids = await publish_many(url, channel, payloads)
        received = await healthy.take(len(ids), timeout=20)
    assert [e.id for e in received] == ids

    rest = await asyncio.to_thread(_read_to_end, stalled)  # the server closed it: recv reached EOF
    body = _dechunk(bytes(opening) + rest)
    stalled.close()
    got = SSEParser().feed(body)
    assert 0 < len(got) < len(ids), "the stalled client was cut off before the end"
    assert [e.id for e in got] == ids[: len(got)], "what it did get is a clean prefix"

    async with open_stream(f"{url}/events/{channel}", last_event_id=got[-1].id) as resumed:
        rest = await resumed.take(len(ids) - len(got), timeout=20)
    assert [e.id for e in rest] == ids[len(got) :]
    assert "Exception in ASGI application" not in small_client_buffer_gateway.log()


@pytest.mark.timeout(90)
async def test_a_slow_reader_that_catches_up_gets_everything_and_stays_connected(large_client_buffer_gateway, channel):
    gateway = large_client_buffer_gateway
    waited_before = _value(httpx.get(f"{gateway.url}/metrics").text, "sse_writes_waited_total")
    slow = stalled_request(gateway.port, f"/events/{channel}")
    raw = bytearray()
    await asyncio.to_thread(recv_until, slow, b"\nretry:", raw)  # its stream is open, its position fixed
    # About 10 MB: more than the sockets hold (4 MB at most here), so writes must wait; less than the client buffer.
    ids = await publish_many(gateway.url, channel, [f"{i:04d}:" + "x" * 16000 for i in range(600)])
    waited = _value(httpx.get(f"{gateway.url}/metrics").text, "sse_writes_waited_total") - waited_before
    assert waited > 0, "the test never made the server wait for the slow reader"

    def read_events(count: int) -> list:
        slow.settimeout(20)
        while raw.count(b"\n\n") <= count:  # the opening lines end with a blank line too
            chunk = slow.recv(65536)
            assert chunk, "the server closed the slow reader's stream"
            raw.extend(chunk)
        return [e for e in SSEParser().feed(_dechunk(bytes(raw))) if e.data]

    received = await asyncio.to_thread(read_events, len(ids))
    assert [e.id for e in received] == ids
    last = await publish(gateway.url, channel, "after")
    assert [e.id for e in await asyncio.to_thread(read_events, len(ids) + 1)][-1] == last
    slow.close()
    assert "write failed" not in gateway.log() and "stream failed" not in gateway.log()


class _DeferredBody:
    """What StreamHost expects of a stream: run it later, or abandon it."""

    def __init__(self, order: list) -> None:
        self.order = order

    async def run(self, receive, send) -> None:
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    def abandon(self) -> None:
        self.order.append(("stream", "abandoned"))


async def test_stream_host_runs_a_deferred_body_after_the_app_returns_with_the_servers_own_send():
    order = []

    async def server_send(message: dict) -> None:
        order.append(("server", message["type"]))

    async def receive() -> dict:
        return {"type": "http.disconnect"}

    async def app(scope, receive, send):
        async def wrapped_send(message: dict) -> None:
            order.append(("middleware", message["type"]))
            await server_send(message)

        await wrapped_send({"type": "http.response.start", "status": 200, "headers": []})
        scope[STREAM_HOST].append(_DeferredBody(order))
        order.append(("app", "returned"))

    await StreamHost(app)({"type": "http", "path": "/"}, receive, server_send)
    assert order == [
        ("middleware", "http.response.start"),
        ("server", "http.response.start"),
        ("app", "returned"),
        ("server", "http.response.body"),
    ]


async def test_stream_host_abandons_a_deferred_body_when_the_app_fails_after_it():
    order = []

    async def app(scope, receive, send):
        scope[STREAM_HOST].append(_DeferredBody(order))
        raise RuntimeError("a middleware failed after the response started")

    async def ignore(*args) -> None:
        pass

    with pytest.raises(RuntimeError):
        await StreamHost(app)({"type": "http", "path": "/"}, ignore, ignore)
    assert order == [("stream", "abandoned")]


@pytest.fixture
def conflating_gateway(redis_server) -> Iterator[GatewayProcess]:
    env = {
        "SSE_GATEWAY_CONFLATE_CHANNELS": "*-prices",
        "SSE_GATEWAY_CLIENT_BUFFER_EVENTS": "16",
        "SSE_GATEWAY_CLIENT_BUFFER_BYTES": "262144",
    }
    process = GatewayProcess(redis_server.url, env=env).start()
    yield process
    process.stop()


@pytest.mark.timeout(90)
async def test_a_stalled_client_of_a_conflated_channel_gets_the_newest_event_instead_of_being_evicted(
    conflating_gateway, channel
):
    gateway, prices = conflating_gateway, f"{channel}-prices"
    client = stalled_request(gateway.port, f"/events/{prices}")
    raw = bytearray()
    await asyncio.to_thread(recv_until, client, b"\nretry:", raw)
    probe = await publish(gateway.url, prices, "probe")
    await asyncio.to_thread(recv_until, client, b"data: probe\n\n", raw)  # live now; from here it reads nothing
    # About 10 MB, far more than the sockets hold and than its buffer of 16 events: a client that is not conflated
    # would be evicted (see the first test of this module).
    ids = await publish_many(gateway.url, prices, [f"{i:04d}:" + "x" * 16000 for i in range(600)])
    newest = await publish(gateway.url, prices, "the newest")
    await asyncio.to_thread(recv_until, client, b"data: the newest\n\n", raw)
    after = await publish(gateway.url, prices, "after")
    await asyncio.to_thread(recv_until, client, b"data: after\n\n", raw)  # still connected
    client.close()

    received = [e.id for e in SSEParser().feed(_dechunk(bytes(raw))) if e.data]
    assert received[0] == probe and received[-2:] == [newest, after]
    assert len(received) < len(ids) + 3, "it skipped intermediate values (else the test never made it fall behind)"
    assert set(received) <= {probe, *ids, newest, after}
    assert received == sorted(received, key=lambda i: tuple(map(int, i.split("-")))), "ids only grow"
    assert "reason=overflow" not in gateway.log() and "reason=stalled" not in gateway.log()


@pytest.fixture
def own_redis() -> Iterator[RedisProcess]:
    """A Redis this test alone uses, so it may kill it (with AOF, so the buffer survives a restart)."""
    server = RedisProcess(appendonly=True).start()
    yield server
    server.stop()


@pytest.mark.timeout(60)
async def test_a_stream_opened_while_redis_is_down_ends_at_once_and_the_next_one_works_once_redis_is_back(
    own_redis, channel
):
    gateway = GatewayProcess(own_redis.url).start()
    try:
        own_redis.kill()
        async with open_stream(f"{gateway.url}/events/{channel}") as stream:
            assert await stream.ended(timeout=20), "the gateway ended the stream"
        # A 200 that ends (a client retries it; a 5xx would stop a browser for good), with no position: none is known.
        assert stream.response.status_code == 200
        assert stream.raw == b": connected\nretry: 200\n\n"
        assert "reason=redis_unavailable" in gateway.log()

        own_redis.start()
        await asyncio.to_thread(wait_until, gateway.ready, what="the gateway ready again")
        async with open_stream(f"{gateway.url}/events/{channel}") as stream:
            await stream.read_raw_until(b"retry:")
            event_id = await publish(gateway.url, channel, "once Redis is back")
            assert (await stream.next_event()).id == event_id
    finally:
        gateway.stop()


@pytest.mark.timeout(90)
async def test_redis_killed_during_a_long_replay_ends_the_stream_cleanly_and_the_resume_is_exact(own_redis, channel):
    gateway = GatewayProcess(own_redis.url).start()
    try:
        # About 10 MB of backlog: far more than the sockets hold, so the replay cannot end before the client reads.
        ids = await publish_many(gateway.url, channel, [f"{i:04d}:" + "x" * 16000 for i in range(600)])
        client = stalled_request(gateway.port, f"/events/{channel}?lastEventId=0-0")
        raw = bytearray()
        await asyncio.to_thread(recv_until, client, b"data: 0000:", raw)  # the replay is under way; stop reading
        own_redis.kill()
        raw += await asyncio.to_thread(_read_to_end, client)  # the stream ends: recv reached EOF
        client.close()
        got = [e for e in SSEParser().feed(_dechunk(bytes(raw))) if e.data]
        assert 0 < len(got) < len(ids), "the replay was cut off by the failure"
        assert [e.id for e in got] == ids[: len(got)], "what it got is a clean prefix"
        assert "reason=redis_unavailable" in gateway.log()

        own_redis.start()
        await asyncio.to_thread(wait_until, gateway.ready, what="the gateway ready again")
        async with open_stream(f"{gateway.url}/events/{channel}", last_event_id=got[-1].id) as resumed:
            rest = await resumed.take(len(ids) - len(got), timeout=20)
            live = await publish(gateway.url, channel, "live")
            assert (await resumed.next_event()).id == live, "nothing twice"
        assert [e.id for e in rest] == ids[len(got) :]
        assert "stream failed" not in gateway.log()
    finally:
        gateway.stop()


@pytest.mark.timeout(60)
async def test_a_resume_whose_backlog_read_fails_still_sends_its_opening_lines_before_it_ends(own_redis, channel):
    # No ring: the resume must read Redis. Paused, Redis still looks subscribed, so the stream goes straight to its
    # backlog read, which times out: its opening lines were never written on their own, and must go with its end.
    gateway = GatewayProcess(own_redis.url, env={"SSE_GATEWAY_RECENT_EVENTS": "0"}).start()
    try:
        async with open_stream(f"{gateway.url}/events/{channel}") as holder:
            await holder.read_raw_until(b"retry:")
            ids = [await publish(gateway.url, channel, f"m{n}") for n in range(3)]
            own_redis.pause()
            try:
                async with open_stream(f"{gateway.url}/events/{channel}", last_event_id=ids[0]) as stream:
                    assert await stream.ended(timeout=30), "the gateway ended the stream"
            finally:
                own_redis.resume()
        assert stream.response.status_code == 200
        assert stream.raw == f": connected\nretry: 200\nid: {ids[0]}\n\n".encode(), stream.raw
        assert "reason=redis_unavailable" in gateway.log()
    finally:
        gateway.stop()
