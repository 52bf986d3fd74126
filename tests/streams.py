"""An SSE stream read over real HTTP with httpx, parsed by the spec-following parser of the Python client.

A background task reads the body, so a test can wait for events with a timeout without cancelling a read midway.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx

from sse_gateway_client import ServerSentEvent, SSEParser

_END = object()


class Stream:
    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self.parser = SSEParser()
        self.raw = bytearray()
        self._events: asyncio.Queue[ServerSentEvent | object] = asyncio.Queue()
        self._progress = asyncio.Event()
        self.finished = False
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        try:
            async for chunk in self.response.aiter_raw():
                self.raw += chunk
                for event in self.parser.feed(chunk):
                    self._events.put_nowait(event)
                self._progress.set()
        except httpx.HTTPError:
            pass
        finally:
            self.finished = True
            self._events.put_nowait(_END)
            self._progress.set()

    async def next_event(self, timeout: float = 10.0) -> ServerSentEvent:
        item = await asyncio.wait_for(self._events.get(), timeout)
        if item is _END:
            self._events.put_nowait(_END)
            raise EOFError("the stream ended")
        assert isinstance(item, ServerSentEvent)
        return item

    async def take(self, count: int, timeout: float = 10.0) -> list[ServerSentEvent]:
        return [await self.next_event(timeout) for _ in range(count)]

    async def read_raw_until(self, marker: bytes, timeout: float = 10.0, *, after: int = 0) -> bytes:
        """The raw body once ``marker`` is in it (past its first ``after`` bytes)."""
        async with asyncio.timeout(timeout):
            while marker not in self.raw[after:]:
                if self.finished:
                    raise EOFError(f"the stream ended before {marker!r}")
                self._progress.clear()
                await self._progress.wait()
        return bytes(self.raw)

    async def ended(self, timeout: float = 10.0) -> bool:
        """True once the server has ended the response."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(self._reader), timeout)
        return self.finished

    async def close(self) -> None:
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader


@asynccontextmanager
async def open_stream(
    url: str, *, last_event_id: str | None = None, **params: str | list[str]
) -> AsyncIterator[Stream]:
    headers = {"Accept": "text/event-stream"}
    if last_event_id is not None:
        headers["Last-Event-ID"] = last_event_id
    async with (
        httpx.AsyncClient(timeout=httpx.Timeout(10.0, read=30.0)) as client,
        client.stream("GET", url, headers=headers, params=params or None) as response,
    ):
        stream = Stream(response)
        try:
            yield stream
        finally:
            await stream.close()


async def publish(base_url: str, channel: str, data: str, event: str | None = None) -> str:
    async with httpx.AsyncClient(timeout=10) as client:
        response = await client.post(
            f"{base_url}/publish/{channel}", content=data, params={"event": event} if event else None
        )
    assert response.status_code == 201, response.text
    return response.json()["id"]


async def publish_many(base_url: str, channel: str, datas: list[str]) -> list[str]:
    """Publish one event per item over one connection; returns their ids."""
    ids = []
    async with httpx.AsyncClient(timeout=10) as client:
        for data in datas:
            response = await client.post(f"{base_url}/publish/{channel}", content=data)
            assert response.status_code == 201, response.text
            ids.append(response.json()["id"])
    return ids


def stalled_request(port: int, path: str) -> socket.socket:
    """A client that asks for a stream and then does not read it, with a small receive window."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: test\r\nAccept: text/event-stream\r\n\r\n".encode())
    return sock


def recv_until(sock: socket.socket, marker: bytes, received: bytearray, timeout: float = 20.0) -> bytes:
    """Read a raw socket into ``received`` until ``marker`` is in it (blocking: run it in a thread)."""
    sock.settimeout(timeout)
    start = 0
    while marker not in received[start:]:
        start = max(0, len(received) - len(marker))
        chunk = sock.recv(65536)
        if not chunk:
            raise EOFError(f"the server closed the stream before {marker!r}")
        received += chunk
    return bytes(received)
