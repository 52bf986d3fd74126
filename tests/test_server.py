"""`sse-gateway serve` as a real process: the embedded Redis, and shutdown with streams open."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest

from tests.processes import alive, children
from tests.servers import GatewayProcess, RedisProcess, wait_until
from tests.streams import open_stream, publish

RETRY_MS = 200  # GatewayProcess's SSE_GATEWAY_RETRY_MS
RETRY = re.compile(rb"^retry: (\d+)$", re.MULTILINE)


class Body:
    """A stream's raw body, read in the background, and how it ended: cleanly (the last chunk of the response
    came) or with the httpx error that an abrupt end raises (the peer closed mid-response)."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self.raw = bytearray()
        self.error: httpx.HTTPError | None = None
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        try:
            async for chunk in self.response.aiter_raw():
                self.raw += chunk
        except httpx.HTTPError as exc:
            self.error = exc

    async def opening(self, timeout: float = 10.0) -> bytes:
        """The opening frame (a comment, the retry hint, the starting id), once it has come."""
        async with asyncio.timeout(timeout):
            while b"\n\n" not in self.raw:
                if self._reader.done():
                    raise EOFError(f"the stream ended before its opening: {bytes(self.raw)!r}")
                await asyncio.sleep(0.02)
        return bytes(self.raw[: self.raw.index(b"\n\n") + 2])

    async def ended_cleanly(self, timeout: float = 10.0) -> bool:
        await asyncio.wait_for(asyncio.shield(self._reader), timeout)
        return self.error is None

    def shutdown_retry(self) -> int:
        """The retry value of the drain's own frame: the one retry line after the opening frame."""
        opening_end = self.raw.index(b"\n\n") + 2
        values = [int(value) for value in RETRY.findall(bytes(self.raw[opening_end:]))]
        assert len(values) == 1, f"one retry frame after the opening, not {values}: {bytes(self.raw)!r}"
        return values[0]


@asynccontextmanager
async def body_of(url: str) -> AsyncIterator[Body]:
    async with (
        httpx.AsyncClient(timeout=httpx.Timeout(10.0, read=30.0)) as client,
        client.stream("GET", url, headers={"Accept": "text/event-stream"}) as response,
    ):
        body = Body(response)
        try:
            yield body
        finally:
            body._reader.cancel()


def assert_drained(body: Body, opening: bytes) -> None:
    """Ended by the drain, not by a dead process: a clean end, after a retry of its own, spread over the window."""
    assert body.error is None, f"the response did not end cleanly: {body.error!r}"
    assert RETRY.findall(opening) == [str(RETRY_MS).encode()], opening
    assert RETRY_MS <= body.shutdown_retry() <= 2 * RETRY_MS


def _embedded_server_pid(gateway: GatewayProcess) -> int:
    assert gateway.process is not None
    (pid,) = children(gateway.process.pid)
    command = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    assert any(b"redis.sock" in part for part in command), command
    return pid


@pytest.mark.timeout(60)
async def test_serve_without_redis_url_starts_embedded_server_and_stops_it_on_sigterm(channel):
    gateway = GatewayProcess(None).start()
    try:
        embedded = _embedded_server_pid(gateway)
        assert "embedded server" in gateway.log()
        async with body_of(f"{gateway.url}/events/{channel}") as body:
            opening = await body.opening()
            event_id = await publish(gateway.url, channel, "via embedded redis")
            async with asyncio.timeout(10):
                while b"data: via embedded redis\n\n" not in body.raw:
                    await asyncio.sleep(0.02)
            assert f"id: {event_id}\ndata: via embedded redis\n\n".encode() in body.raw

            gateway.process.send_signal(signal.SIGTERM)
            assert await body.ended_cleanly(timeout=10), f"the app ends open streams itself: {body.error!r}"
        assert_drained(body, opening)
        # uvicorn re-raises the signal once it has shut down (gateway.server); the lifespan's end ran before.
        assert await asyncio.to_thread(gateway.process.wait, 15) == -signal.SIGTERM
        assert "Application shutdown complete" in gateway.log()
        await asyncio.to_thread(wait_until, lambda: not alive(embedded), what="embedded server exit", timeout=10)
    finally:
        gateway.stop()


async def test_sigkilled_gateway_takes_its_embedded_server_with_it():
    gateway = GatewayProcess(None).start()
    embedded = _embedded_server_pid(gateway)
    gateway.kill()
    await asyncio.to_thread(wait_until, lambda: not alive(embedded), what="embedded server exit", timeout=10)


@pytest.mark.timeout(60)
async def test_sigterm_with_many_open_streams_exits_without_waiting_for_clients(redis_server, channel):
    gateway = GatewayProcess(redis_server.url).start()
    try:
        async with contextlib.AsyncExitStack() as streams:
            bodies = [
                await streams.enter_async_context(body_of(f"{gateway.url}/events/{channel}-{i % 5}")) for i in range(50)
            ]
            openings = [await body.opening() for body in bodies]
            gateway.process.send_signal(signal.SIGTERM)
            # A gateway that waited on its clients would never exit, and this wait would fail.
            code = await asyncio.to_thread(gateway.process.wait, 20)
            ended = [await body.ended_cleanly(timeout=5) for body in bodies]
        assert ended == [True] * len(bodies), [repr(body.error) for body in bodies if body.error]
        for body, opening in zip(bodies, openings, strict=True):
            assert_drained(body, opening)
        assert code == -signal.SIGTERM
        assert "timeout graceful shutdown exceeded" not in gateway.log()
        with pytest.raises(httpx.ConnectError):
            httpx.get(gateway.url + "/healthz")
    finally:
        gateway.stop()


@pytest.mark.timeout(60)
async def test_two_workers_with_embedded_server_serve_and_shut_down_together(channel):
    gateway = GatewayProcess(None, "--workers", "2").start()
    try:
        assert gateway.process is not None
        spawned = children(gateway.process.pid)
        assert len(spawned) >= 3, "the embedded server and two workers (and multiprocessing helpers)"
        async with open_stream(f"{gateway.url}/events/{channel}") as stream:
            await stream.read_raw_until(b"retry:")
            ids = [await publish(gateway.url, channel, f"m{i}") for i in range(6)]
            assert [e.id for e in await stream.take(6)] == ids
        async with body_of(f"{gateway.url}/events/{channel}") as body:
            opening = await body.opening()
            code = await asyncio.to_thread(gateway.terminate, 20)
            assert await body.ended_cleanly(timeout=5), repr(body.error)
        assert_drained(body, opening)
        # uvicorn's supervisor handles the signal itself, stops its workers and returns: serve() returns 0.
        assert code == 0
        assert gateway.log().count("Application shutdown complete") == 2
        await asyncio.to_thread(
            wait_until, lambda: not any(alive(pid) for pid in spawned), what="workers and embedded server exit"
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
        # Logged before it asks Redis for its starting position, which it then waits for.
        await asyncio.to_thread(
            wait_until, lambda: f"stream opened channels={channel} " in gateway.log(), what="the stream opening"
        )
        code = await asyncio.to_thread(gateway.terminate, 20)
        assert code == -signal.SIGTERM
        response = await opening  # an abrupt end would raise here: the body would lack its last chunk
        assert response.status_code == 200
        # No starting id (Redis never said), the opening retry, then the drain's own.
        assert response.content.startswith(b": connected\nretry: 200\n\n"), response.content
        values = [int(value) for value in RETRY.findall(response.content)]
        assert len(values) == 2 and RETRY_MS <= values[1] <= 2 * RETRY_MS, response.content
        assert b"id:" not in response.content
        assert "timeout graceful shutdown exceeded" not in gateway.log()
    finally:
        redis.resume()
        gateway.stop()
        redis.stop()


async def _drain_by_signal(gateway: GatewayProcess, channel: str, sig: signal.Signals) -> int:
    """Open a few streams, send ``sig``, check each was drained; the exit code."""
    assert gateway.process is not None
    async with contextlib.AsyncExitStack() as streams:
        bodies = [await streams.enter_async_context(body_of(f"{gateway.url}/events/{channel}-{i}")) for i in range(5)]
        openings = [await body.opening() for body in bodies]
        gateway.process.send_signal(sig)
        code = await asyncio.to_thread(gateway.process.wait, 20)
        ended = [await body.ended_cleanly(timeout=5) for body in bodies]
    assert ended == [True] * len(bodies), [repr(body.error) for body in bodies if body.error]
    for body, opening in zip(bodies, openings, strict=True):
        assert_drained(body, opening)
    return code


@pytest.mark.timeout(60)
async def test_sigint_drains_open_streams_as_sigterm_does_and_the_process_exits(redis_server, channel):
    gateway = GatewayProcess(redis_server.url).start()
    try:
        code = await _drain_by_signal(gateway, channel, signal.SIGINT)
        # uvicorn re-raises SIGINT after its shutdown as a KeyboardInterrupt, which serve ends quietly on, as
        # uvicorn.run does: a clean Ctrl-C exits 0.
        assert code == 0
        log = gateway.log()
        assert "Application shutdown complete" in log and "timeout graceful shutdown exceeded" not in log
    finally:
        gateway.stop()


@pytest.mark.timeout(60)
async def test_sigint_ends_the_process_without_a_traceback(redis_server, channel):
    gateway = GatewayProcess(redis_server.url).start()
    try:
        await _drain_by_signal(gateway, channel, signal.SIGINT)
        assert "Traceback" not in gateway.log(), gateway.log()[-2000:]
    finally:
        gateway.stop()


@pytest.mark.parametrize("where", ["flag", "environment"])
def test_a_bad_log_format_refuses_to_start_with_one_line_and_exit_code_2(where):
    command = [sys.executable, "-m", "gateway", "serve", "--port", "0", "--redis-url", "redis://127.0.0.1:1/0"]
    env = dict(os.environ)
    if where == "flag":
        command += ["--log-format", "yaml"]
    else:
        env["SSE_GATEWAY_LOG_FORMAT"] = "yaml"
    result = subprocess.run(command, capture_output=True, text=True, timeout=30, env=env)
    lines = (result.stdout + result.stderr).splitlines()
    assert result.returncode == 2, lines
    assert len(lines) == 1 and "'yaml' is not one of text, json" in lines[0], lines
    assert lines[0].startswith("sse-gateway serve: "), lines
