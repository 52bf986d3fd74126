"""What uvicorn's httptools protocol does not bound by itself: the request head, the time to send a request, and how
many connections a process holds.

Without these, one connection sending a header that never ends grows the process by every byte it sends (the parser
keeps the unfinished header), and connections that send half a request and then nothing are held for ever. The
protocol here is uvicorn's own, with three checks on the way in:

- the request head (request line and headers) may be ``max_head_bytes`` long; past that the client gets ``431`` and
  nothing more it sends is kept;
- the whole request, head and body, must arrive within ``request_timeout`` of the connection (or of the previous
  response), else the connection is closed; a stream, once its request is in, is not affected;
- past ``max_connections`` open connections (streams or not) a new one gets ``503`` with ``Retry-After`` at once.

A refusal is written, the sending side shut, and what the client still sends read and dropped for a moment before
the close, so that the client can read the answer rather than a reset. Each one is counted in
``sse_refused_total{limit}``. The checks run once per read, not per byte or per header.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import partial
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from gateway.metrics import HTTP_CONNECTIONS, REFUSED

# How long a refused connection is read and drained before it is closed.
LINGER = 1.0


@dataclass(frozen=True)
class HttpLimits:
    max_head_bytes: int  # 0: no limit
    request_timeout: float  # 0: no limit
    max_connections: int  # 0: no limit
    retry_after: int = 5  # seconds, for the 503

    @property
    def off(self) -> bool:
        return not (self.max_head_bytes or self.request_timeout or self.max_connections)


def protocol_for(limits: HttpLimits) -> Any:
    """The ``http`` option for uvicorn.Config: the limited protocol, or plain httptools when every limit is off."""
    if limits.off:
        return "httptools"
    clock = _RequestClock(limits.request_timeout) if limits.request_timeout else None
    return partial(LimitedHttpToolsProtocol, limits=limits, clock=clock)


def _refusal(status: bytes, code: str, detail: str, extra: bytes = b"") -> bytes:
    body = json.dumps({"error": code, "detail": detail}, separators=(",", ":")).encode() + b"\n"  # as errors.JSONLine
    return (
        b"HTTP/1.1 " + status + b"\r\ncontent-type: application/json\r\ncontent-length: %d\r\n" % len(body)
        + extra + b"connection: close\r\n\r\n" + body
    )  # fmt: skip


class _RequestClock:
    """One timer per process for the request timeout, not one per request: it looks at every connection in turn.

    A timer per request (``call_later`` then ``cancel``) costs about 4 us under uvloop here, as much as a tenth of a
    whole /healthz request; a look once a quarter of the timeout at a few thousand connections costs a fraction of
    a millisecond, and makes the timeout at most a quarter later than asked.
    """

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self._handle: Any = None

    def watch(self, loop: Any, connections: set[Any]) -> None:
        if self._handle is None:
            self._loop, self._connections = loop, connections
            self._handle = loop.call_later(self.timeout / 4, self._look)

    def _look(self) -> None:
        now = self._loop.time()
        for protocol in list(self._connections):
            guard = getattr(protocol, "guard", None)
            since = None if guard is None else guard.request_since
            if since is not None and now - since > self.timeout:
                protocol.request_timed_out()
        self._handle = self._loop.call_later(self.timeout / 4, self._look)


class _Guard:
    """One connection's state for the limits. In one slotted object, not as attributes of the protocol: uvicorn's
    protocol has 28, and past 30 an instance's attributes no longer share their keys with the other instances, which
    cost every connection 1.3 KiB (13.4 against 12.1 KiB per open stream, ``python -m bench.storm --scenarios fresh
    --clients 10000`` with the limits on and off)."""

    __slots__ = ("limits", "clock", "request_since", "in_head", "head_bytes", "read_size", "began_in_read", "refused")

    def __init__(self, limits: HttpLimits, clock: _RequestClock | None) -> None:
        self.limits = limits
        self.clock = clock
        # Since when a request (head and body) has been awaited; None while none is (a response is running).
        self.request_since: float | None = None
        self.in_head = True  # between a request's first byte (or the connection) and the end of its headers
        self.head_bytes = 0  # read while in the head, counted per read: the parser keeps an unfinished header
        self.read_size = 0
        self.began_in_read = False  # a request began inside the current read (pipelined after another's end)
        self.refused = False


class LimitedHttpToolsProtocol(HttpToolsProtocol):
    def __init__(self, *args: Any, limits: HttpLimits, clock: _RequestClock | None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.guard = _Guard(limits, clock)

    def connection_made(self, transport: Any) -> None:  # type: ignore[override]
        super().connection_made(transport)
        HTTP_CONNECTIONS.inc()
        guard = self.guard
        cap = guard.limits.max_connections
        if cap and len(self.connections) > cap:
            detail = "the gateway holds as many connections as it may; retry later"
            retry = b"retry-after: %d\r\n" % guard.limits.retry_after
            self._refuse("max_http_connections", b"503 Service Unavailable", "too_many_connections", detail, retry)
            return
        if guard.clock is not None:
            guard.request_since = self.loop.time()
            guard.clock.watch(self.loop, self.connections)

    def connection_lost(self, exc: Exception | None) -> None:
        guard = self.guard
        HTTP_CONNECTIONS.dec()
        guard.request_since = None
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        guard = self.guard
        if guard.refused:
            return  # read and dropped: nothing a refused client sends is kept
        guard.read_size, guard.began_in_read = len(data), False
        super().data_received(data)
        limit = guard.limits.max_head_bytes
        if limit and guard.in_head and not guard.refused and not self.transport.is_closing():
            if guard.began_in_read:
                # Only the end of this read is the new request's: count what of its head is parsed so far (an
                # unfinished header is counted from the next read on, which keeps the bound within one read).
                guard.head_bytes = self._head_size()
            else:
                guard.head_bytes += len(data)
            if guard.head_bytes > limit:
                self._refuse_head()

    # -- parser callbacks: where a request begins, where its head and where it ends; nothing after a refusal -------

    def on_message_begin(self) -> None:
        guard = self.guard
        if not guard.refused:
            super().on_message_begin()
            guard.in_head, guard.head_bytes, guard.began_in_read = True, 0, True
            if guard.clock is not None and guard.request_since is None:
                guard.request_since = self.loop.time()

    def on_headers_complete(self) -> None:
        guard = self.guard
        if guard.refused:
            return
        guard.in_head = False
        limit = guard.limits.max_head_bytes
        # Measured here only when the reads it came in could hold too much: a head that began in this read is at most
        # the read's size (its count was reset at its start); one spread over several reads is counted as
        # data_received counts it, so it may pass the limit by what its first read left unparsed, within one read.
        # Measuring every head cost a twentieth of a stream's start in a reconnect storm (bench.storm, fresh).
        if limit and guard.head_bytes + guard.read_size > limit and self._head_size() > limit:
            self._refuse_head()  # the app is never run for it
            return
        super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        guard = self.guard
        if not guard.refused:
            super().on_body(body)

    def on_message_complete(self) -> None:
        guard = self.guard
        if not guard.refused:
            guard.request_since = None
            super().on_message_complete()

    def _head_size(self) -> int:
        return len(self.url) + sum(len(name) + len(value) + 4 for name, value in self.headers)

    # -- refusals ----------------------------------------------------------------------------------------------------

    def request_timed_out(self) -> None:
        guard = self.guard
        guard.request_since = None
        if self.transport.is_closing():
            return
        REFUSED.labels("request_timeout").inc()
        if guard.in_head and (self.cycle is None or self.cycle.response_complete):
            self.transport.write(_refusal(b"408 Request Timeout", "request_timeout", "the request took too long"))
        # With its head in but not its body, the app is running: a closed connection is how its receive() learns.
        self.transport.close()

    def _refuse_head(self) -> None:
        guard = self.guard
        detail = f"the request line and headers must not exceed {guard.limits.max_head_bytes} bytes"
        self._refuse("request_head_bytes", b"431 Request Header Fields Too Large", "request_head_too_large", detail)

    def _refuse(self, limit: str, status: bytes, code: str, detail: str, extra: bytes = b"") -> None:
        guard = self.guard
        REFUSED.labels(limit).inc()
        guard.refused = True
        guard.request_since = None
        if self.cycle is None or self.cycle.response_complete:  # else a response is under way: no room for ours
            self.transport.write(_refusal(status, code, detail, extra))
            if self.transport.can_write_eof():
                self.transport.write_eof()
                self.loop.call_later(LINGER, self._close_lingering)
                return
        self.transport.close()

    def _close_lingering(self) -> None:
        if not self.transport.is_closing():
            self.transport.abort()
