"""The reconnect storm's clients, run as their own process by bench/storm.py: many raw-socket SSE streams opened at
once on one uvloop loop.

The spec is one JSON line on stdin: ``port``, ``path``, ``clients``, ``in_flight``, ``behind``, ``last_event_id``,
``timeout`` and ``mode``. Every event's data starts ``s=<seq>;``. Times are ``time.monotonic_ns()``, one clock for
every process on the machine. By mode:

- ``behind``: prints ``ready``, waits for ``go``, then opens every stream with ``Last-Event-ID``, at most
  ``in_flight`` of them between connect and response head at a time. Each stream reads until it has ``behind``
  events, which must be seqs 0 to behind - 1 in that order, and closes. ``result`` once every stream is done or
  failed, or ``timeout`` passed.
- ``fresh``: the same without ``Last-Event-ID``; each stream waits for its response head and its first body bytes and
  stays open. ``open`` once every stream is open or failed; on ``close`` they all close, and ``result`` says how many
  the server had dropped meanwhile.
- ``hold``: one stream, opened at once: ``open`` once it has its first bytes, then ``seen`` with the highest seq each
  time events arrive, until stdin says anything or closes.
"""

from __future__ import annotations

import asyncio
import json
import re
import resource
import sys
import time
from collections import Counter

import uvloop

from bench.chunked import Dechunker
from bench.loadgen import build_request, cpu_seconds, emit, read_command

DATA = re.compile(rb"^data: (?:s=(-?\d+);)?", re.MULTILINE)  # an event not of the storm gives b""
monotonic_ns = time.monotonic_ns


class Storm:
    """What one process's streams share: what they are after, and how many have not got there (or failed) yet."""

    def __init__(self, mode: str, behind: int, clients: int) -> None:
        self.mode, self.behind = mode, behind
        self.pending = clients
        self.reached = asyncio.Event()

    def one_reached(self) -> None:
        self.pending -= 1
        if self.pending == 0:
            self.reached.set()


class Stream(asyncio.Protocol):
    """One SSE connection: its head, its de-chunked body, and the seqs of its events."""

    def __init__(self, storm: Storm, request: bytes) -> None:
        self.storm, self.request = storm, request
        self.transport: asyncio.Transport | None = None
        self.head = b""
        self.got_head = asyncio.get_running_loop().create_future()
        self.dechunker: Dechunker | None = None
        self.tail = b""
        self.started_ns = self.open_ns = self.done_ns = 0
        self.events = 0
        self.error: str | None = None  # why it failed before reaching its goal
        self.dropped: str | None = None  # why an open fresh stream ended before it was closed
        self.reached = self.closing = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        if not self.got_head.done():
            self.head += data
            end = self.head.find(b"\r\n\r\n")
            if end < 0:
                return
            head, data = self.head[:end].lower(), self.head[end + 4 :]
            self.head = b""
            self.got_head.set_result(None)
            if head[9:12] != b"200":
                return self.fail(f"status {head[9:12].decode()}")
            if b"x-sse-refused" in head:
                return self.fail("refused by the server (x-sse-refused)")
            if b"transfer-encoding: chunked" in head:
                self.dechunker = Dechunker()
        body = self.dechunker.feed(data) if self.dechunker else data
        if body and not self.open_ns:
            self.open_ns = monotonic_ns()
            if self.storm.mode == "fresh":
                self._reach()
            elif self.storm.mode == "hold":
                emit("open")
        if self.storm.mode != "fresh":
            self._read(body)
        if self.dechunker is not None and self.dechunker.ended:
            self.fail("the server ended the stream")

    def _read(self, body: bytes) -> None:
        buffer = self.tail + body if self.tail else body
        cut = buffer.rfind(b"\n") + 1
        self.tail = buffer[cut:]
        if not cut or self.closing:
            return
        seqs = DATA.findall(buffer, 0, cut)
        if self.storm.mode == "hold":
            if numbers := [int(seq) for seq in seqs if seq]:
                emit("seen", seq=max(numbers))
            return
        for seq in seqs:
            if seq != b"%d" % self.events:
                return self.fail("an event out of order or not of the storm")
            self.events += 1
            if self.events == self.storm.behind:
                self.done_ns = monotonic_ns()
                self._reach()
                return self.close()

    def _reach(self) -> None:
        if not self.reached:
            self.reached = True
            self.storm.one_reached()

    def fail(self, reason: str) -> None:
        if self.closing:
            return
        if self.reached:
            self.dropped = reason
        else:
            self.error = reason
            self._reach()
        if self.storm.mode == "hold":
            emit("failed", reason=reason)
        self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.got_head.done():
            self.got_head.set_result(None)
            self.fail("closed before the response head")
        self.fail("closed by the server")

    def close(self) -> None:
        self.closing = True
        if self.transport is not None:
            self.transport.abort()


async def open_stream(stream: Stream, port: int, gate: asyncio.Semaphore, timeout: float) -> None:
    loop = asyncio.get_running_loop()
    async with gate:  # held from connect to response head: the in-flight bound
        stream.started_ns = monotonic_ns()
        try:
            async with asyncio.timeout(timeout):
                await loop.create_connection(lambda: stream, "127.0.0.1", port)
                await stream.got_head
        except TimeoutError:
            stream.fail(f"no response head within {timeout:.0f} s")
        except OSError as exc:
            stream.fail(f"connect failed: {type(exc).__name__}")


async def storm(spec: dict) -> None:
    request = build_request("127.0.0.1", spec["port"], spec["path"], spec.get("last_event_id"))
    state = Storm(spec["mode"], spec.get("behind", 0), spec["clients"])
    streams = [Stream(state, request) for _ in range(spec["clients"])]
    emit("ready")
    if await read_command() != "go":
        return
    cpu, wall = cpu_seconds(), monotonic_ns()
    gate = asyncio.Semaphore(spec["in_flight"])
    opening = asyncio.gather(*(open_stream(s, spec["port"], gate, 30.0) for s in streams))
    try:
        await asyncio.wait_for(state.reached.wait(), spec["timeout"])
    except TimeoutError:
        opening.cancel()
        for stream in (s for s in streams if not s.reached):
            stream.fail(f"not done when the storm's {spec['timeout']:.0f} s were up")
    await asyncio.gather(opening, return_exceptions=True)
    reached = [s for s in streams if s.error is None]
    emit(
        "result" if state.mode == "behind" else "open",
        clients=len(streams),
        ok=len(reached),
        failures=Counter(s.error for s in streams if s.error),
        first_start_ns=min((s.started_ns for s in streams if s.started_ns), default=0),
        last_ns=max((s.done_ns or s.open_ns for s in reached), default=0),
        durations_ns=[(s.done_ns or s.open_ns) - s.started_ns for s in reached],
        cpu_s=cpu_seconds() - cpu,
        wall_s=(monotonic_ns() - wall) / 1e9,
    )
    if state.mode == "fresh":
        await read_command()
        dropped = Counter(s.dropped for s in streams if s.dropped)
        for stream in streams:
            stream.close()
        emit("result", dropped=sum(dropped.values()), drop_reasons=dropped)


async def hold(spec: dict) -> None:
    """One stream of the channel kept open through the storm, so the channel has a local subscriber on the server."""
    stream = Stream(Storm("hold", 0, 1), build_request("127.0.0.1", spec["port"], spec["path"], None))
    await open_stream(stream, spec["port"], asyncio.Semaphore(1), 30.0)
    await read_command()
    stream.close()


def main() -> None:
    spec = json.loads(sys.stdin.readline())
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    uvloop.run(hold(spec) if spec["mode"] == "hold" else storm(spec))


if __name__ == "__main__":
    main()
