"""How a live stream's queued bytes reach its client: one interface, three ways, chosen once per stream.

The flusher (gateway.fanout.flusher) writes for many clients from one callback, so a write must not need the
client's own task unless it has to wait. ``write`` starts a write and either finishes it there (None) or returns a
``Pending`` write, which the stream's own task finishes (or drops, if the stream is ending). The ways, fastest first:

- ``direct``: under uvicorn's httptools protocol, the HTTP/1.1 chunk written straight into the connection's
  transport, as uvicorn's ``send`` would write it, while the transport takes writes; anything else goes to
  ``stepped``. This reads uvicorn's connection state (``disconnected``, ``flow.write_paused``, ``transport``), which
  is not part of ASGI: ``DirectWriter.usable`` checks the class and the attributes, the gateway logs once why it is
  off when it is, and pyproject.toml pins uvicorn below its next minor version.
- ``stepped``: the server's ``send`` run by hand as far as it goes without waiting (gateway.fanout.stepping): no
  task wake-up when the socket takes the bytes. Needs a ``send`` that may run outside the request's task, which
  uvicorn's (httptools and h11) may.
- ``plain``: every write handed to the stream's own task, which awaits ``send``, as any ASGI app does: for servers
  the gateway does not know.

What each way gains, measured by ``python -m bench.run --only a,c --servers gateway1,nchan1 --repeat 3
--gateway-env SSE_GATEWAY_WRITE_PATH=<way>`` (2026-12-03, bench/results/20261203-write-paths.txt), in gateway CPU
per delivery and, in brackets, as a ratio to Nchan's in the same run:

=========================  ==============  ==============  ==============
scenario                   direct          stepped         plain
=========================  ==============  ==============  ==============
(c) paced, 2000 x 20/s     9.75 (1.29x)    11.43 (1.53x)   15.62 (2.04x)
(c40) paced, 2000 x 40/s   7.98 (1.11x)    9.83 (1.33x)    12.40 (1.77x)
(a) burst, 1000 x 400      1.65 (0.77x)    1.72 (0.78x)    2.12 (1.04x)
=========================  ==============  ==============  ==============

Direct takes 15-19 % off stepped where each event is its own write, and about 4 % in a burst, where writes are
few and large; stepped takes 19-27 % off plain. Both are kept (the bar is about 10 %).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from gateway.fanout.stepping import Blocked, finish, send_now, unstarted

try:
    from uvicorn.protocols.http.httptools_impl import RequestResponseCycle
except ImportError:  # uvicorn without httptools: there is no direct way
    RequestResponseCycle = None

log = logging.getLogger("gateway.fanout.writer")

WAYS = ("direct", "stepped", "plain")
Send = Callable[[dict[str, object]], Awaitable[None]]
_declined: set[str] = set()  # the reasons already logged: each is said once per process
NO_BODY = "a HEAD response has no body"  # not worth a log line


class Pending:
    """A write that could not finish at once: the stream's own task finishes it, or drops it as the stream ends."""

    __slots__ = ("_blocked", "socket_full")

    def __init__(self, blocked: Blocked, *, socket_full: bool) -> None:
        self._blocked = blocked
        self.socket_full = socket_full  # False for a plain write, which waits for the task, not for the client

    async def finish(self) -> None:
        await finish(self._blocked)

    def drop(self) -> None:
        self._blocked[0].close()  # the send's own clean-up runs now


def _body(body: bytes) -> dict[str, object]:
    return {"type": "http.response.body", "body": body, "more_body": True}


class PlainWriter:
    """``await send`` in the stream's task for every write: a task wake-up per client per write (the baseline)."""

    way = "plain"
    __slots__ = ("_send",)

    def __init__(self, send: Send) -> None:
        self._send = send

    def write(self, body: bytes) -> Pending | None:
        return Pending(unstarted(self._send(_body(body))), socket_full=False)


class SteppedWriter:
    """``send`` run by hand in the flusher's callback; only a write that must wait goes to the stream's task.

    Gain over plain: 27 % less CPU per delivery paced, 19 % in a burst (see the table above)."""

    way = "stepped"
    __slots__ = ("_send",)

    def __init__(self, send: Send) -> None:
        self._send = send

    def write(self, body: bytes) -> Pending | None:
        blocked = send_now(self._send(_body(body)))
        return None if blocked is None else Pending(blocked, socket_full=True)


class DirectWriter:
    """uvicorn's chunk, written to its transport by the flusher; ``stepped`` whenever the transport pushes back.

    Gain over stepped: 15-19 % less CPU per delivery paced, about 4 % in a burst (see the table above)."""

    way = "direct"
    __slots__ = ("_cycle", "_stepped")

    def __init__(self, send: Send) -> None:
        self._cycle: Any = getattr(send, "__self__", None)
        self._stepped = SteppedWriter(send)

    @staticmethod
    def usable(send: Send) -> str | None:
        """None if ``send`` is a uvicorn httptools response, started and chunked; else why it is not."""
        cycle = getattr(send, "__self__", None)
        if RequestResponseCycle is None:
            return "uvicorn's httptools protocol is not installed"
        if type(cycle) is not RequestResponseCycle:
            kind = type(cycle)
            return f"the server's send is not uvicorn's httptools response ({kind.__module__}.{kind.__qualname__})"
        try:
            if cycle.scope["method"] == "HEAD":
                return NO_BODY
            if not (cycle.response_started and not cycle.response_complete and cycle.chunked_encoding is True):
                return "the response is not a started, chunked one"
            if not (
                isinstance(cycle.flow.write_paused, bool)
                and isinstance(cycle.disconnected, bool)
                and callable(cycle.transport.write)
            ):
                return "uvicorn's connection state is not as this gateway knows it"
        except (AttributeError, KeyError, TypeError) as exc:
            return f"uvicorn's connection state is not as this gateway knows it ({exc!r})"
        return None

    def write(self, body: bytes) -> Pending | None:
        cycle = self._cycle
        if cycle.disconnected:
            return None  # what send does too: the bytes have nowhere to go, and the stream is ending
        if cycle.flow.write_paused or cycle.response_complete or not body:
            return self._stepped.write(body)  # send waits, raises, or writes nothing: never an early last chunk
        cycle.transport.write(b"%x\r\n%b\r\n" % (len(body), body))
        return None


Writer = DirectWriter | SteppedWriter | PlainWriter


def writer_for(send: Send, way: str = "direct") -> Writer:
    """The writer for a live stream's ``send``: ``way`` if it can be, else the next one down that can."""
    if way == "direct":
        why_not = DirectWriter.usable(send)
        if why_not is None:
            return DirectWriter(send)
        fallback = "stepped" if _is_uvicorns(send) else "plain"
        if why_not not in _declined and why_not != NO_BODY:
            _declined.add(why_not)
            log.warning("live streams are written %s, not direct: %s", fallback, why_not)
        way = fallback
    if way == "stepped":
        return SteppedWriter(send)
    return PlainWriter(send)


def _is_uvicorns(send: Send) -> bool:
    """Whether ``send`` is uvicorn's own, which may run outside the request's task (so stepped is safe)."""
    return type(getattr(send, "__self__", None)).__module__.startswith("uvicorn.")
