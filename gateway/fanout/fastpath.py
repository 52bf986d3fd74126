"""A way past uvicorn's ``send`` for the body of a live stream: the same chunk, written to the same transport.

For every body message uvicorn's ``send`` builds an HTTP/1.1 chunk and writes it to the connection's transport. The
coroutine, the message dict and the checks around it cost as much Python as the write itself, and a gateway makes
one such write per client per event. So when the response is uvicorn's own (httptools) cycle, sending chunked, the
flusher writes the chunk itself while the transport takes writes, and goes through ``send`` for anything else: a
transport that is pushing back (``send`` then waits, see gateway.fanout.flusher), the last chunk, other servers.

This reads uvicorn's connection state (``disconnected``, ``flow.write_paused``, ``transport``), which is not part of
ASGI: ``for_send`` checks the class and the attributes and gives up (returns None) on anything unexpected, and
tests/fanout/test_fastpath.py runs it under the installed uvicorn. Without it the flusher still works with any server
whose ``send`` can run outside the request's task (uvicorn's h11 protocol, for one), stepping it by hand.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

try:
    from uvicorn.protocols.http.httptools_impl import RequestResponseCycle
except ImportError:  # uvicorn without httptools: there is no fast path, and send does everything
    RequestResponseCycle = None


class ChunkWriter:
    __slots__ = ("_cycle",)

    def __init__(self, cycle: Any) -> None:
        self._cycle = cycle

    @classmethod
    def for_send(cls, send: Callable[..., object]) -> ChunkWriter | None:
        """A writer for the response ``send`` belongs to, once its headers are sent; None if there can be none."""
        cycle = getattr(send, "__self__", None)
        if RequestResponseCycle is None or type(cycle) is not RequestResponseCycle:
            return None
        try:
            usable = (
                cycle.response_started
                and not cycle.response_complete
                and cycle.chunked_encoding is True
                and cycle.scope["method"] != "HEAD"
                and isinstance(cycle.flow.write_paused, bool)
                and isinstance(cycle.disconnected, bool)
                and callable(cycle.transport.write)
            )
        except (AttributeError, KeyError, TypeError):
            return None
        return cls(cycle) if usable else None

    def write(self, body: bytes) -> bool:
        """Write ``body`` as one chunk if the transport takes it now; False means: go through ``send``."""
        cycle = self._cycle
        if cycle.disconnected:
            return True  # what send does too: the bytes have nowhere to go, and the stream is ending
        if cycle.flow.write_paused or cycle.response_complete or not body:
            return False  # send waits, raises, or (for an empty body) writes nothing: never an early last chunk
        cycle.transport.write(b"%x\r\n%b\r\n" % (len(body), body))
        return True
