"""A short JSON answer (a publish's 201) written to the socket in one piece.

Through ASGI an answer is two messages, and uvicorn writes each at once: two ``send()`` system calls and two packets
for a 60-byte answer, about a sixth of the gateway's CPU per publish in a profile. Under uvicorn's httptools
protocol, with the connection in a state this module knows, the head and the body go in one ``transport.write``
and the response is completed as uvicorn's own ``send`` completes it; anything else (another server, a wrapped
``send`` such as the access log's or CORS's, a paused or closed connection) gets the two ASGI messages. As the
stream writer (gateway.fanout.writer) does, this reads uvicorn's connection state, and pyproject.toml pins uvicorn
below its next minor version; every internal it uses is read before any is changed, and a ``send`` that is not
uvicorn's own, or internals not as expected, are logged once.

Measured by ``python -m bench.publish --rounds 3 --variant twowrites:SSE_GATEWAY_WRITE_PATH=stepped`` (wrk, 16
connections, one gateway process, 2026-12-07, bench/results/20261207-publish-ab.txt): 89.0 µs of gateway CPU per
publish with two writes, 80.7 µs with one, and 11,039 against 12,219 publishes a second. ``SSE_GATEWAY_WRITE_PATH``
other than ``direct`` switches it off, with the streams' direct writes.
"""

from __future__ import annotations

import json
import logging
from typing import Any, NamedTuple

from starlette.types import Send

try:
    from uvicorn.protocols.http.httptools_impl import STATUS_LINE, RequestResponseCycle
except ImportError:  # uvicorn without httptools: always two messages
    RequestResponseCycle = None

JSON_TYPE = (b"content-type", b"application/json")

log = logging.getLogger("gateway.http.whole")


def json_line(content: object) -> bytes:
    """JSON on one line ending in a newline, as errors.JSONLine renders it."""
    return json.dumps(content, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode() + b"\n"


async def send_json(send: Send, status: int, content: object, *, one_write: bool = True) -> None:
    body = json_line(content)
    length = str(len(body)).encode()
    cycle = _open_cycle(send) if one_write else None
    if cycle is not None:
        _write_whole(cycle, status, length, body)
        return
    await send({"type": "http.response.start", "status": status, "headers": [JSON_TYPE, (b"content-length", length)]})
    await send({"type": "http.response.body", "body": body})


def _open_cycle(send: Send) -> _Cycle | None:
    """uvicorn's httptools response behind ``send``, read whole, if it is not started and its connection takes
    writes now; None otherwise. A ``send`` that is not uvicorn's own, or uvicorn internals not as expected, are
    logged once: the answers then go as two messages, as any ASGI app's."""
    cycle = getattr(send, "__self__", None)
    if RequestResponseCycle is None or type(cycle) is not RequestResponseCycle:
        _decline_once("the answer's send is not uvicorn's httptools send (a middleware wraps it, or another server)")
        return None
    if getattr(send, "__func__", None) is not RequestResponseCycle.send:
        _decline_once("the answer's send is another method of uvicorn's response")
        return None
    try:
        parts = _Cycle(
            cycle, cycle.transport, cycle.default_headers, cycle.keep_alive, cycle.message_event, cycle.on_response
        )
        writable = (
            cycle.response_started is False
            and cycle.disconnected is False
            and cycle.flow.write_paused is False
            and not cycle.access_log  # uvicorn's own access line, which the gateway turns off: its send writes it
            and cycle.scope["method"] != "HEAD"
        )
    except (AttributeError, KeyError) as missing:
        _decline_once(f"uvicorn's response is not as this module knows it ({missing!r})")
        return None
    return parts if writable else None


class _Cycle(NamedTuple):
    """What the one write uses of uvicorn's response, read before anything of it is changed."""

    cycle: Any
    transport: Any
    default_headers: list[tuple[bytes, bytes]]
    keep_alive: bool
    message_event: Any
    on_response: Any


def _write_whole(parts: _Cycle, status: int, length: bytes, body: bytes) -> None:
    # What uvicorn's send does for a start and a last body with a content-length, in one write.
    head = [STATUS_LINE[status]]
    for name, value in (*parts.default_headers, JSON_TYPE, (b"content-length", length)):
        head += [name, b": ", value, b"\r\n"]
    if not parts.keep_alive:
        head.append(b"connection: close\r\n")
    head += [b"\r\n", body]
    parts.cycle.response_started = True
    parts.cycle.waiting_for_100_continue = False
    parts.transport.write(b"".join(head))
    parts.cycle.response_complete = True
    parts.message_event.set()
    if not parts.keep_alive:
        parts.transport.close()
    parts.on_response()


_declined: set[str] = set()


def _decline_once(reason: str) -> None:
    if reason not in _declined:
        _declined.add(reason)
        log.info("JSON answers go as two ASGI messages, not one write: %s", reason)
