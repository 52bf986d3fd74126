"""`sse-gateway serve` as a real process: the embedded Redis, and shutdown with streams open."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import httpx
import pytest

from tests.servers import GatewayProcess, RedisProcess, wait_until
from tests.streams import open_stream, publish


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.append(int(entry.name))
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _embedded_server_pid(gateway: GatewayProcess) -> int:
    assert gateway.process is not None
    (pid,) = _children(gateway.process.pid)
    command = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    assert any(b"redis.sock" in part for part in command), command
    return pid


@pytest.mark.timeout(60)
async def test_serve_without_redis_url_starts_embedded_server_and_stops_it_on_sigterm(channel):
    gateway = GatewayProcess(None).start()
    try:
        embedded = _embedded_server_pid(gateway)
        assert "embedded server" in gateway.log()
        async with open_stream(f"{gateway.url}/events/{channel}") as stream:
            await stream.read_raw_until(b"retry:")
            event_id = await publish(gateway.url, channel, "via embedded redis")
            event = await stream.next_event()
            assert (event.id, event.data) == (event_id, "via embedded redis")

            gateway.process.send_signal(signal.SIGTERM)
            assert await stream.ended(timeout=10), "the app ends open streams itself"
        assert stream.parser.retry is not None and stream.parser.retry >= 200
        await asyncio.to_thread(gateway.process.wait, 15)
        await asyncio.to_thread(wait_until, lambda: not _alive(embedded), what="embedded server exit", timeout=10)
    finally:
        gateway.stop()


async def test_sigkilled_gateway_takes_its_embedded_server_with_it():
    gateway = GatewayProcess(None).start()
    embedded = _embedded_server_pid(gateway)
    gateway.kill()
    await asyncio.to_thread(wait_until, lambda: not _alive(embedded), what="embedded server exit", timeout=10)


@pytest.mark.timeout(60)
async def test_sigterm_with_many_open_streams_exits_without_waiting_for_clients(redis_server, channel):
    gateway = GatewayProcess(redis_server.url).start()
    try:
        contexts = [open_stream(f"{gateway.url}/events/{channel}-{i % 5}") for i in range(50)]
        streams = [await context.__aenter__() for context in contexts]
        for stream in streams:
            await stream.read_raw_until(b"retry:")
        gateway.process.send_signal(signal.SIGTERM)
        # A gateway that waited on its clients would never exit, and this wait would fail.
        code = await asyncio.to_thread(gateway.process.wait, 20)
        assert all([await stream.ended(timeout=5) for stream in streams])
        for context in contexts:
            await context.__aexit__(None, None, None)
        assert code in (0, -signal.SIGTERM)
        with pytest.raises(httpx.ConnectError):
            httpx.get(gateway.url + "/healthz")
    finally:
        gateway.stop()


@pytest.mark.timeout(60)
async def test_two_workers_with_embedded_server_serve_and_shut_down_together(channel):
    gateway = GatewayProcess(None, "--workers", "2").start()
    try:
        assert gateway.process is not None
        children = _children(gateway.process.pid)
        assert len(children) >= 3, "the embedded server and two workers (and multiprocessing helpers)"
        async with open_stream(f"{gateway.url}/events/{channel}") as stream:
            await stream.read_raw_until(b"retry:")
            ids = [await publish(gateway.url, channel, f"m{i}") for i in range(6)]
            assert [e.id for e in await stream.take(6)] == ids
            code = await asyncio.to_thread(gateway.terminate, 20)
            assert await stream.ended(timeout=5)
        assert code in (0, -signal.SIGTERM)
        await asyncio.to_thread(
            wait_until, lambda: not any(_alive(pid) for pid in children), what="workers and embedded server exit"
        )
    finally:
        gateway.stop()


@pytest.mark.timeout(60)
async def test_sigterm_ends_a_stream_that_is_still_opening_while_redis_is_paused(channel):
    redis = RedisProcess().start()
    gateway = GatewayProcess(redis.url).start()
    try:
        redis.pause()
        opening = asyncio.create_task(httpx.AsyncClient(timeout=30).get(f"{gateway.url}/events/{channel}"))
        await asyncio.sleep(0.5)  # the stream is waiting on Redis for its starting position
        code = await asyncio.to_thread(gateway.terminate, 20)
        assert code in (0, -signal.SIGTERM)
        response = await opening
        assert response.status_code == 200 and b"retry:" in response.content
        assert "timeout graceful shutdown exceeded" not in gateway.log()
    finally:
        redis.resume()
        gateway.stop()
        redis.stop()
