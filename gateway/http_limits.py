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
    return "httptools" if limits.off else partial(LimitedHttpToolsProtocol, limits=limits)


def _refusal(status: bytes, code: str, detail: str, extra: bytes = b"") -> bytes:
    body = json.dumps({"error": code, "detail": detail}).encode()
    return (
        b"HTTP/1.1 " + status + b"\r\ncontent-type: application/json\r\ncontent-length: %d\r\n" % len(body)
        + extra + b"connection: close\r\n\r\n" + body
    )  # fmt: skip


class LimitedHttpToolsProtocol(HttpToolsProtocol):
    def __init__(self, *args: Any, limits: HttpLimits, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._limits = limits
        self._in_head = True  # between a request's first byte (or the connection) and the end of its headers
        self._head_bytes = 0  # read while in the head, counted per read: the parser keeps an unfinished header
        self._head_size = 0  # of the head being parsed, from the parser's callbacks: a head may come in one read
        self._request_timer: Any = None
        self._refused = False

    def connection_made(self, transport: Any) -> None:  # type: ignore[override]
        super().connection_made(transport)
        HTTP_CONNECTIONS.inc()
        cap = self._limits.max_connections
        if cap and len(self.connections) > cap:
            detail = "the gateway holds as many connections as it may; retry later"
            retry = b"retry-after: %d\r\n" % self._limits.retry_after
            self._refuse("max_http_connections", b"503 Service Unavailable", "too_many_connections", detail, retry)
            return
        self._arm_request_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        HTTP_CONNECTIONS.dec()
        self._disarm_request_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return  # read and dropped: nothing a refused client sends is kept
        super().data_received(data)
        limit = self._limits.max_head_bytes
        if limit and self._in_head and not self._refused and not self.transport.is_closing():
            self._head_bytes += len(data)
            if self._head_bytes > limit:
                self._refuse_head()

    # -- parser callbacks: the head's size and the request's end; nothing after a refusal --------------------------

    def on_message_begin(self) -> None:
        if not self._refused:
            super().on_message_begin()
            self._in_head, self._head_bytes, self._head_size = True, 0, 0
            self._arm_request_timer()

    def on_url(self, url: bytes) -> None:
        if not self._refused:
            super().on_url(url)
            self._head_size += len(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self._refused:
            super().on_header(name, value)
            self._head_size += len(name) + len(value) + 4

    def on_headers_complete(self) -> None:
        if self._refused:
            return
        self._in_head = False
        if self._limits.max_head_bytes and self._head_size > self._limits.max_head_bytes:
            self._refuse_head()  # the app is never run for it
            return
        super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        if not self._refused:
            super().on_body(body)

    def on_message_complete(self) -> None:
        if not self._refused:
            self._disarm_request_timer()
            super().on_message_complete()

    # -- the request timer and refusals ----------------------------------------------------------------------------

    def _arm_request_timer(self) -> None:
        if self._limits.request_timeout and self._request_timer is None:
            self._request_timer = self.loop.call_later(self._limits.request_timeout, self._request_timed_out)

    def _disarm_request_timer(self) -> None:
        if self._request_timer is not None:
            self._request_timer.cancel()
            self._request_timer = None

    def _request_timed_out(self) -> None:
        self._request_timer = None
        if self.transport.is_closing():
            return
        REFUSED.labels("request_timeout").inc()
        if self._in_head and (self.cycle is None or self.cycle.response_complete):
            self.transport.write(_refusal(b"408 Request Timeout", "request_timeout", "the request took too long"))
        # With its head in but not its body, the app is running: a closed connection is how its receive() learns.
        self.transport.close()

    def _refuse_head(self) -> None:
        detail = f"the request line and headers must not exceed {self._limits.max_head_bytes} bytes"
        self._refuse("request_head_bytes", b"431 Request Header Fields Too Large", "request_head_too_large", detail)

    def _refuse(self, limit: str, status: bytes, code: str, detail: str, extra: bytes = b"") -> None:
        REFUSED.labels(limit).inc()
        self._refused = True
        self._disarm_request_timer()
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
