"""Subscribers that record into the invariant checker: one that resumes like a browser, and bare-socket ones.

``ResumingSubscriber`` behaves like an ``EventSource``: after any end or error it waits ``retry`` and reconnects
with ``Last-Event-ID``, the last id it saw (the composite cursor on a multi-channel stream). It reads in its own
task, so nothing that waits on it ever cancels a read midway; only ``pause`` and ``stop`` end a connection, the way a
closed laptop lid would.

``RawStream`` speaks HTTP/1.1 over a plain socket, for the clients a library would not let us be: one that stops
reading with a tiny receive window, and one that hangs up in the middle of an event frame.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import re
import socket
import struct

import httpx

from sse_gateway_client import SSEParser
from tests.invariants import Connection, SubscriberLog

_ENDS_WITH_RETRY = re.compile(rb"(?:\A|\n)retry: [0-9]+\n\n\Z")


class StreamDecoder:
    """Parses one subscriber's stream bodies, connection after connection, into its log."""

    def __init__(self, log: SubscriberLog, last_event_id: str = "") -> None:
        self.log = log
        self.parser = SSEParser(last_event_id)
        self.connection: Connection | None = None
        self._head = bytearray()
        self._opened = False
        self._tail = b""

    @property
    def last_event_id(self) -> str:
        return self.parser.last_event_id

    def begin(self) -> Connection:
        self.connection = self.log.connecting(self.parser.last_event_id or None)
        self.parser.reset()
        self._head.clear()
        self._opened = False
        self._tail = b""
        return self.connection

    def feed(self, chunk: bytes) -> None:
        assert self.connection is not None
        if not self._opened:
            # The opening frame (": connected", "retry:", "id:") is an id-only block: no event, so read it apart.
            self._head += chunk
            end = self._head.find(b"\n\n")
            if end >= 0:
                self._opened = True
                block = bytes(self._head[: end + 2])
                probe = SSEParser()
                probe.feed(block)
                cleanly = block.startswith(b": connected\n")
                self.log.opened(self.connection, probe.last_event_id or None, cleanly=cleanly)
        for event in self.parser.feed(chunk):
            self.log.take(event.event, event.id, event.data)
        self._tail = (self._tail + chunk)[-256:]

    def end(self, how: str) -> None:
        if self.connection is not None and self.connection.end is None:
            self.log.ended(self.connection, how, with_retry=_ENDS_WITH_RETRY.search(self._tail) is not None)

    @property
    def tail(self) -> bytes:
        return self._tail


def events_path(channels: tuple[str, ...]) -> str:
    if len(channels) == 1:
        return f"/events/{channels[0]}"
    return "/events?" + "&".join(f"channel={channel}" for channel in channels)


class ResumingSubscriber:
    def __init__(
        self,
        base_url: str,
        log: SubscriberLog,
        *,
        client: httpx.AsyncClient | None = None,
        last_event_id: str = "",
        max_retry_ms: int = 1000,
        max_connections: int = 5000,
        lifetime: float = 3600.0,
    ) -> None:
        self.url = base_url + events_path(log.channels)
        self.log = log
        self.decoder = StreamDecoder(log, last_event_id)
        self._own_client = client is None
        # The read timeout outlasts the gateway's heartbeat, so only a dead connection trips it.
        self._client = client or new_stream_client()
        self._max_retry_ms = max_retry_ms
        self._max_connections = max_connections
        self._lifetime = lifetime
        self._active = asyncio.Event()
        self._active.set()
        self._stopping = False
        self._task: asyncio.Task[None] | None = None
        self._connection: asyncio.Task[None] | None = None

    @property
    def last_event_id(self) -> str:
        return self.decoder.last_event_id

    @property
    def connected(self) -> bool:
        """An open connection whose opening frame has arrived with a starting id."""
        connection = self.decoder.connection
        return connection is not None and connection.end is None and connection.opening is not None

    def start(self) -> ResumingSubscriber:
        self._task = asyncio.create_task(self._run(), name=f"subscriber {self.log.name}")
        return self

    async def pause(self) -> None:
        """Hang up and stay away until ``resume``."""
        self._active.clear()
        await self._hang_up()

    def resume(self) -> None:
        self._active.set()

    async def drop(self) -> None:
        """Hang up; it reconnects after the retry time, as after a network error."""
        await self._hang_up()

    async def stop(self) -> None:
        self._stopping = True
        self._active.set()
        await self._hang_up()
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                await asyncio.wait_for(self._task, 10)
        if self._own_client:
            await self._client.aclose()

    async def _hang_up(self) -> None:
        task = self._connection
        if task is not None and not task.done():
            task.cancel()
            await asyncio.wait({task})

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._lifetime
        for _ in range(self._max_connections):
            await self._active.wait()
            if self._stopping or loop.time() > deadline:
                return
            self._connection = asyncio.create_task(self._connect_once())
            try:
                await self._connection
            except asyncio.CancelledError:
                if asyncio.current_task().cancelling():  # type: ignore[union-attr]
                    raise
            if self._stopping:
                return
            retry = self.decoder.parser.retry if self.decoder.parser.retry is not None else 200
            await asyncio.sleep(min(retry, self._max_retry_ms) / 1000 + random.uniform(0, 0.05))

    async def _connect_once(self) -> None:
        connection = self.decoder.begin()
        headers = {"Accept": "text/event-stream", "Cache-Control": "no-cache"}
        if connection.sent:
            headers["Last-Event-ID"] = connection.sent
        try:
            async with self._client.stream("GET", self.url, headers=headers) as response:
                if response.status_code != 200:
                    await response.aread()
                    self.decoder.end(f"status {response.status_code}")
                    return
                async for chunk in response.aiter_raw():
                    self.decoder.feed(chunk)
            self.decoder.end("end")
        except httpx.HTTPError as exc:
            self.decoder.end(f"error: {type(exc).__name__}")
        except asyncio.CancelledError:
            self.decoder.end("hung up")
            raise


def new_stream_client() -> httpx.AsyncClient:
    """A client for many long streams: no pool limit, and no kept-alive connection reused after a stream ends."""
    return httpx.AsyncClient(
        timeout=httpx.Timeout(5.0, read=10.0),
        limits=httpx.Limits(max_connections=None, max_keepalive_connections=0),
    )


class RawStream:
    """One stream request over a bare socket, read (or not) by hand, recording into a subscriber's log."""

    def __init__(self, port: int, log: SubscriberLog, *, receive_buffer: int | None = None) -> None:
        self.port = port
        self.log = log
        self.decoder = StreamDecoder(log)
        self._receive_buffer = receive_buffer
        self._body = _ChunkedBody()
        self._sock: socket.socket | None = None
        self._events_at_open = 0
        self._body_tail = b""
        self.at_eof = False

    async def open(self) -> RawStream:
        sock = socket.socket()
        if self._receive_buffer is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self._receive_buffer)
        sock.setblocking(False)
        loop = asyncio.get_running_loop()
        await loop.sock_connect(sock, ("127.0.0.1", self.port))
        self._sock = sock
        connection = self.decoder.begin()
        self._events_at_open = len(self.log.received)
        resume = f"Last-Event-ID: {connection.sent}\r\n" if connection.sent else ""
        request = f"GET {events_path(self.log.channels)} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        await loop.sock_sendall(sock, (request + f"Accept: text/event-stream\r\n{resume}\r\n").encode())
        return self

    async def receive(self, size: int = 65536) -> bool:
        """Read once; False at the end of the connection."""
        assert self._sock is not None
        try:
            data = await asyncio.get_running_loop().sock_recv(self._sock, size)
        except OSError as exc:
            data, how = b"", f"error: {exc}"
        else:
            how = "end" if self._body.complete else "error: closed mid-body"
        if not data:
            self.at_eof = True
            self.decoder.end(how)
            return False
        body = self._body.feed(data)
        if self._body.status not in (None, 200):
            self.decoder.end(f"status {self._body.status}")
            return False
        if body:
            self.decoder.feed(body)
            self._body_tail = (self._body_tail + body)[-4096:]
        return True

    async def read_to_end(self, timeout: float) -> bool:
        """Read everything until the server closes the connection; False if it is still open after ``timeout``."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                while await self.receive():
                    pass
        return self.at_eof

    @property
    def inside_an_event(self) -> bool:
        """At least one event arrived on this connection, and the bytes since hold only part of the next one."""
        if len(self.log.received) <= self._events_at_open:
            return False
        rest = self._body_tail.rpartition(b"\n\n")[2]
        return any(field in rest for field in (b"id:", b"event:", b"data:"))

    def close(self, *, reset: bool = False) -> None:
        """Hang up: with a FIN, or with a RST when ``reset``."""
        if self._sock is None:
            return
        if reset:
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self._sock.close()
        self._sock = None
        self.decoder.end("hung up")


class _ChunkedBody:
    """Incremental HTTP/1.1 response decoding: the status line and headers, then the chunked body's bytes."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self.status: int | None = None
        self._chunked = False
        self._need = 0  # data bytes left in the current chunk
        self._crlf = 0  # bytes of the CRLF after a chunk still to skip
        self.complete = False

    def feed(self, data: bytes) -> bytes:
        buffer = self._buffer
        buffer += data
        if self.status is None:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                return b""
            head = bytes(buffer[:end]).decode("latin-1")
            del buffer[: end + 4]
            self.status = int(head.split()[1])
            self._chunked = "transfer-encoding: chunked" in head.lower()
        out = bytearray()
        if not self._chunked:
            out += buffer
            buffer.clear()
            return bytes(out)
        while not self.complete:
            if self._crlf:
                skip = min(self._crlf, len(buffer))
                del buffer[:skip]
                self._crlf -= skip
                if self._crlf:
                    break
            if self._need:
                take = min(self._need, len(buffer))
                out += buffer[:take]
                del buffer[:take]
                self._need -= take
                if self._need:
                    break
                self._crlf = 2
                continue
            line_end = buffer.find(b"\r\n")
            if line_end < 0:
                break
            size = int(bytes(buffer[:line_end]).split(b";")[0], 16)
            del buffer[: line_end + 2]
            if size == 0:
                self.complete = True
            self._need = size
        return bytes(out)
