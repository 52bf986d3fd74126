"""Graceful drain on SIGTERM with 1000 open streams, over raw sockets to a dedicated gateway process.

Every stream ends with a jittered ``retry:`` hint and a clean end of its response, the server closes every connection,
and the process exits on its own without uvicorn having to cancel a stream. Meanwhile no new stream goes live, and
``/readyz`` says "draining" if it answers at all; then the gateway stops accepting connections.

Whether a probe lands in the instant between the drain and uvicorn closing its listener (at most one of its 0.1 s
ticks) is luck, so what a stream or ``/readyz`` requested during a drain gets is checked deterministically on an
in-thread gateway whose hub is drained as the signal handler drains it (gateway.app).
"""

from __future__ import annotations

import asyncio
import re
import resource
import signal
import socket
import subprocess
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from gateway.app import create_app
from gateway.config import Settings
from tests.servers import GatewayProcess, ThreadedServer
from tests.streams import open_stream

STREAMS = 1000
CHANNELS = 10
RETRY_MS = 1000
RETRY = re.compile(rb"retry: (\d+)\n")
LAST_CHUNK = b"\r\n0\r\n\r\n"  # the empty chunk that ends a chunked HTTP/1.1 response cleanly


def raise_open_files_limit(needed: int) -> None:
    """Enough descriptors here and in the gateway, which inherits the limit: one socket per stream on each side."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


def request_bytes(path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n".encode()


class RawStream:
    """One SSE request on its own socket, with everything the server sent, HTTP framing included."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.received = b""
        self.eof = False

    @classmethod
    async def open(cls, port: int, path: str) -> RawStream:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(request_bytes(path))
        await writer.drain()
        return cls(reader, writer)

    async def read_until(self, marker: bytes, timeout: float) -> None:
        async with asyncio.timeout(timeout):
            while marker not in self.received and not self.eof:
                await self._read()

    async def read_to_eof(self, timeout: float) -> None:
        async with asyncio.timeout(timeout):
            while not self.eof:
                await self._read()

    async def _read(self) -> None:
        try:
            chunk = await self.reader.read(65536)
        except ConnectionResetError:
            chunk = b""
        self.received += chunk
        self.eof = not chunk

    def close(self) -> None:
        self.writer.close()


def fetch(port: int, path: str, timeout: float = 5.0) -> bytes | None:
    """Everything the server sends for one request until it closes the connection; None if it refuses to connect.

    Blocking, for a thread: the test's event loop is busy with 1000 streams and would delay the request.
    Raises TimeoutError if the connection is still open after ``timeout``.
    """
    try:
        connection = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    except ConnectionRefusedError:
        return None
    received = b""
    with connection:
        try:
            connection.sendall(request_bytes(path))
            while chunk := connection.recv(65536):
                received += chunk
        except (ConnectionResetError, BrokenPipeError):
            pass
    return received


def probe_new_stream(port: int, path: str) -> str:
    try:
        received = fetch(port, path)
    except TimeoutError:
        raise AssertionError("a stream requested during the drain is still open after 5 s") from None
    if received is None:
        return "refused"
    if not received:
        return "closed unanswered"
    head, _, body = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 "), received
    assert b"retry: " in body and body.endswith(LAST_CHUNK), received
    assert b"keepalive" not in body and b"data:" not in body, received
    return "200 ended at once"


def probe_readyz(port: int) -> str:
    received = fetch(port, "/readyz")
    if received is None:
        return "refused"
    if not received:
        return "closed unanswered"
    assert received.startswith(b"HTTP/1.1 503 "), received
    assert b'"error":"draining"' in received, received
    return "503 draining"


def terminate_and_probe(process: subprocess.Popen[bytes], port: int, path: str) -> tuple[float, Counter, Counter]:
    """SIGTERM, then probe a new stream and /readyz until the gateway exits or refuses both; bounded.

    Each probe fails the test if it gets anything but a documented answer (see probe_new_stream and probe_readyz).
    """
    streams, readiness = Counter(), Counter()
    with ThreadPoolExecutor(2) as pool:
        signalled = time.monotonic()
        process.send_signal(signal.SIGTERM)
        for _ in range(200):
            if process.poll() is not None:
                break
            stream_probe, readiness_probe = pool.submit(probe_new_stream, port, path), pool.submit(probe_readyz, port)
            streams[stream_probe.result()] += 1
            readiness[readiness_probe.result()] += 1
            if streams["refused"] and readiness["refused"]:
                break
            time.sleep(0.01)  # pacing of the probes, not a synchronisation
        else:
            raise AssertionError(f"still accepting connections after 200 probes: {dict(streams)} {dict(readiness)}")
    return signalled, streams, readiness


@pytest.mark.timeout(180)
async def test_sigterm_drains_1000_streams_with_jittered_retry_and_the_process_exits(redis_server, channel):
    raise_open_files_limit(4 * STREAMS + 1024)
    gateway = GatewayProcess(redis_server.url, env={"SSE_GATEWAY_RETRY_MS": str(RETRY_MS)}).start()
    process = gateway.process
    assert process is not None
    streams: list[RawStream] = []
    readers: list[asyncio.Task[None]] = []
    try:
        opening = asyncio.Semaphore(100)

        async def open_one(i: int) -> RawStream:
            async with opening:
                stream = await RawStream.open(gateway.port, f"/events/{channel}-{i % CHANNELS}")
                await stream.read_until(b"\nretry:", timeout=30)  # the body's line, not the X-SSE-Retry header
                return stream

        async with asyncio.timeout(90):
            streams = list(await asyncio.gather(*(open_one(i) for i in range(STREAMS))))
        for stream in streams:
            assert stream.received.startswith(b"HTTP/1.1 200 "), stream.received[:300]
            assert f"retry: {RETRY_MS}\n".encode() in stream.received, stream.received[:300]
        readers = [asyncio.create_task(stream.read_to_eof(timeout=60)) for stream in streams]

        def wait_for_exit() -> tuple[int, float]:
            code = process.wait(timeout=60)
            return code, time.monotonic()

        # Both in threads, side by side: the exit is timed as it happens, while the probes run.
        (code, exited), (signalled, new_streams, readiness) = await asyncio.gather(
            asyncio.to_thread(wait_for_exit),
            asyncio.to_thread(terminate_and_probe, process, gateway.port, f"/events/{channel}-late"),
        )
        await asyncio.wait_for(asyncio.gather(*readers), timeout=30)

        retries = []
        for stream in streams:
            values = [int(value) for value in RETRY.findall(stream.received)]
            assert len(values) >= 2 and values[0] == RETRY_MS, stream.received[-300:]
            retries.append(values[-1])
            assert stream.eof, "the server closed the connection"
            assert stream.received.endswith(LAST_CHUNK), f"the response did not end cleanly: {stream.received[-300:]!r}"
        print(
            f"\ndrain of {STREAMS} streams: SIGTERM to exit {exited - signalled:.2f} s; final retry "
            f"{min(retries)}..{max(retries)} ms, {len(set(retries))} distinct values; "
            f"new streams meanwhile {dict(new_streams)}; /readyz meanwhile {dict(readiness)}"
        )
        assert all(RETRY_MS <= value <= 2 * RETRY_MS for value in retries), sorted(retries)[:: STREAMS // 10]
        assert len(set(retries)) > 1, "the jitter spreads the reconnects"
        # uvicorn re-raises the signal once it has shut down (see gateway.server), after the lifespan's end.
        assert code == -signal.SIGTERM
        log = gateway.log()
        assert "Application shutdown complete" in log and "timeout graceful shutdown exceeded" not in log
    finally:
        for reader in readers:
            reader.cancel()
        for stream in streams:
            stream.close()
        gateway.stop()


def _retries(body: bytes) -> list[int]:
    return [int(value) for value in RETRY.findall(body)]


async def test_during_a_drain_new_streams_end_at_once_with_a_retry_and_readyz_says_draining(redis_server, channel):
    settings = Settings(redis_url=redis_server.url, auth="off", retry_ms=RETRY_MS, heartbeat=1)
    app = create_app(settings)
    async with httpx.AsyncClient(timeout=10) as client:
        with ThreadedServer(app) as server:
            async with open_stream(f"{server.url}/events/{channel}") as before:
                opening = await before.read_raw_until(b"\n\n")
                assert (await client.get(f"{server.url}/readyz")).status_code == 200
                server.call_in_loop(app.starlette.state.hub.drain)  # what SIGTERM and SIGINT schedule (gateway.app)
                assert await before.ended(timeout=10)
                # Its own frame after the opening: a retry of retry_ms plus a jitter of up to retry_ms.
                (last,) = _retries(bytes(before.raw[len(opening) :]))
                assert RETRY_MS <= last <= 2 * RETRY_MS, before.raw

            # The server is still up (no signal reached uvicorn): every request from here is one made during a drain.
            for number in range(3):
                async with (
                    asyncio.timeout(10),  # a stream that went live would beat every second and never end
                    client.stream("GET", f"{server.url}/events/{channel}-late-{number}") as response,
                ):
                    body = b"".join([chunk async for chunk in response.aiter_raw()])
                assert response.status_code == 200
                assert response.headers["content-type"] == "text/event-stream; charset=utf-8"
                assert body.startswith(b": connected\n"), body
                first, last = _retries(body)
                assert first == RETRY_MS and RETRY_MS <= last <= 2 * RETRY_MS, body
                assert b"data:" not in body and b"id:" not in body and b"keepalive" not in body, body
            ready = await client.get(f"{server.url}/readyz")
            assert (ready.status_code, ready.json().get("error")) == (503, "draining"), ready.text
            assert (await client.get(f"{server.url}/healthz")).status_code == 200
