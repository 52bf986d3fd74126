"""The load generator: many raw-socket SSE connections on one uvloop event loop, run as its own process.

It reads a JSON spec on the first line of stdin, opens the connections, and reports on stdout, one JSON object a line:
``connected``, then ``warm`` once every connection has seen a warm-up message on each of its channels, then, after the
orchestrator writes ``go``, ``result`` once every expected message arrived or the stream went idle. Every message's
data starts ``t=<publish time_ns>;c=<channel index>;s=<seq>;``; a seq of -1 is a warm-up message. The latencies go to
a binary file of int64 nanoseconds, so that several load generators can be merged.

With ``"sequential": true`` it opens the connections one after another after ``go`` instead, and reports how long
each took to receive everything it expected (the replay scenario).
"""

from __future__ import annotations

import asyncio
import json
import re
import resource
import sys
import time
from array import array

import uvloop

from bench.chunked import Dechunker

MESSAGE = re.compile(rb"data: t=(\d+);c=(\d+);s=(-?\d+);")
time_ns = time.time_ns


class Stats:
    def __init__(self, connections: int) -> None:
        self.latencies = array("q")
        self.delivered = 0
        self.duplicates = 0
        self.missing = 0
        self.bytes = 0
        self.first_ns = 0
        self.last_ns = 0
        self.closed_early = 0
        self.pending = connections
        self.cold = connections
        self.done = asyncio.Event()
        self.warm = asyncio.Event()
        if connections == 0:
            self.done.set()
            self.warm.set()


class SSEClient(asyncio.Protocol):
    """One SSE connection. Parses only what it needs: the status, chunked framing, and ``data: t=…`` lines."""

    def __init__(self, stats: Stats, request: bytes, channels: list[int], per_channel: int) -> None:
        self.stats = stats
        self.request = request
        self.next_seq = dict.fromkeys(channels, 0)
        self.cold_channels = set(channels)
        self.per_channel = per_channel
        self.expected = per_channel * len(channels)
        self.received = 0
        self.transport: asyncio.Transport | None = None
        self.head = b""
        self.status = 0
        self.dechunker: Dechunker | None = None
        self.tail = b""
        self.finished = False
        self.opened = asyncio.get_running_loop().create_future()
        self.error: str | None = None
        self.done_ns = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        now = time_ns()
        self.stats.bytes += len(data)
        if not self.status:
            self.head += data
            end = self.head.find(b"\r\n\r\n")
            if end < 0:
                return
            head, data = self.head[:end].lower(), self.head[end + 4 :]
            self.head = b""
            self.status = int(head[9:12])
            if b"transfer-encoding: chunked" in head:
                self.dechunker = Dechunker()
            if not self.opened.done():
                self.opened.set_result(self.status)
            if self.status != 200:
                self._finish()
                return
        body = self.dechunker.feed(data) if self.dechunker else data
        buffer = self.tail + body if self.tail else body
        cut = buffer.rfind(b"\n") + 1
        self.tail = buffer[cut:]
        if cut:
            self._count(MESSAGE.findall(buffer, 0, cut), now)

    def _count(self, messages: list[tuple[bytes, bytes, bytes]], now: int) -> None:
        stats, next_seq, latencies = self.stats, self.next_seq, self.stats.latencies
        for sent, channel, seq in messages:
            s, c = int(seq), int(channel)
            if s < 0:
                if c in self.cold_channels:
                    self.cold_channels.discard(c)
                    if not self.cold_channels:
                        stats.cold -= 1
                        if stats.cold == 0:
                            stats.warm.set()
                continue
            latencies.append(now - int(sent))
            expected_seq = next_seq.get(c)
            if expected_seq is None:
                continue
            if s == expected_seq:
                next_seq[c] = s + 1
            elif s > expected_seq:
                stats.missing += s - expected_seq
                next_seq[c] = s + 1
            else:
                stats.duplicates += 1
            self.received += 1
        if messages:
            if not stats.first_ns:
                stats.first_ns = now
            stats.last_ns = now
            stats.delivered = len(latencies)
            if self.received >= self.expected and all(v >= self.per_channel for v in next_seq.values()):
                self.done_ns = now
                self._finish()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.opened.done():
            self.error = self.error or f"closed before the response: {exc!r}"
            self.opened.set_result(0)
        if not self.finished:
            self.stats.closed_early += 1
            if self.cold_channels:
                self.cold_channels.clear()
                self.stats.cold -= 1
                if self.stats.cold == 0:
                    self.stats.warm.set()
            self._finish()

    def _finish(self) -> None:
        if self.finished:
            return
        self.finished = True
        self.stats.pending -= 1
        if self.stats.pending == 0:
            self.stats.done.set()

    def missing(self) -> int:
        return sum(max(0, self.per_channel - v) for v in self.next_seq.values())

    def close(self) -> None:
        if self.transport is not None:
            self.transport.abort()


def build_request(host: str, port: int, path: str, last_event_id: str | None) -> bytes:
    lines = [f"GET {path} HTTP/1.1", f"Host: {host}:{port}", "Accept: text/event-stream", "Cache-Control: no-cache"]
    if last_event_id:
        lines.append(f"Last-Event-ID: {last_event_id}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def expand(spec: dict) -> list[tuple[bytes, list[int], int]]:
    """(request, channel indexes, expected deliveries) for each connection of the spec's groups."""
    connections = []
    for group in spec["groups"]:
        request = build_request(spec["host"], spec["port"], group["path"], group.get("last_event_id"))
        connections += [(request, group["channels"], spec["messages"])] * group["count"]
    return connections


async def open_one(spec: dict, stats: Stats, conn: tuple, deadline: float) -> SSEClient:
    """One connection, open once its response headers arrived; a failed one is finished and counted at once."""
    loop = asyncio.get_running_loop()
    client = SSEClient(stats, *conn)
    try:
        if time.monotonic() > deadline:
            raise TimeoutError("connect phase over")
        async with asyncio.timeout(min(15.0, deadline - time.monotonic())):
            await loop.create_connection(lambda: client, spec["host"], spec["port"])
            await client.opened
    except (OSError, TimeoutError) as exc:
        client.error = repr(exc)
        client.connection_lost(exc)
        client.close()
    return client


async def read_command() -> str:
    return (await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)).strip()


def emit(event: str, **fields: object) -> None:
    sys.stdout.write(json.dumps({"event": event, **fields}) + "\n")
    sys.stdout.flush()


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def run(spec: dict) -> None:
    connections = expand(spec)
    connect_deadline = time.monotonic() + spec.get("connect_timeout", 90.0)
    stats = Stats(0 if spec.get("sequential") else len(connections))
    clients: list[SSEClient] = []
    if not spec.get("sequential"):
        gate = asyncio.Semaphore(spec.get("connect_concurrency", 200))

        async def gated(conn: tuple) -> SSEClient:
            async with gate:
                return await open_one(spec, stats, conn, connect_deadline)

        clients = await asyncio.gather(*(gated(c) for c in connections))
        failed = [c for c in clients if c.status != 200]
        errors = sorted({c.error or f"status {c.status}" for c in failed})[:5]
        emit("connected", ok=len(clients) - len(failed), failed=len(failed), errors=errors)
    else:
        emit("connected", ok=0, failed=0, errors=[])
    command = asyncio.ensure_future(read_command())
    if spec.get("warmup"):
        # The orchestrator gives up warming up after a while and says go anyway.
        warm = asyncio.ensure_future(stats.warm.wait())
        await asyncio.wait({command, warm}, return_when=asyncio.FIRST_COMPLETED)
        if warm.done():
            emit("warm")
        warm.cancel()
    if await command != "go":
        return
    cpu0, wall0 = cpu_seconds(), time_ns()
    catch_up_ns: list[int] = []
    if spec.get("sequential"):
        for conn in connections:
            stats.pending, stats.done = 1, asyncio.Event()
            started = time_ns()
            client = await open_one(spec, stats, conn, time.monotonic() + 30)
            await _wait_done(stats, spec)
            catch_up_ns.append((client.done_ns or time_ns()) - started)
            client.finished = True
            client.close()
            clients.append(client)
    else:
        await _wait_done(stats, spec)
    wall1, cpu1 = time_ns(), cpu_seconds()
    for client in clients:
        client.finished = True
        client.close()
    with open(spec["latency_file"], "wb") as out:
        stats.latencies.tofile(out)
    complete = sum(1 for c in clients if c.done_ns)
    emit(
        "result",
        delivered=len(stats.latencies),
        expected=sum(c.expected for c in clients) if clients else 0,
        missing=stats.missing + sum(c.missing() for c in clients),
        duplicates=stats.duplicates,
        complete_connections=complete,
        connections=len(clients),
        closed_early=stats.closed_early,
        bytes=stats.bytes,
        first_recv_ns=stats.first_ns,
        last_recv_ns=stats.last_ns,
        go_ns=wall0,
        wall_s=(wall1 - wall0) / 1e9,
        cpu_s=cpu1 - cpu0,
        catch_up_ns=catch_up_ns,
    )


async def _wait_done(stats: Stats, spec: dict) -> None:
    """Until every connection is complete, or nothing arrived for idle_timeout, or the deadline passed."""
    deadline = time.monotonic() + spec.get("deadline", 120.0)
    idle = spec.get("idle_timeout", 5.0)
    last_seen, last_count = time.monotonic(), -1
    while not stats.done.is_set() and time.monotonic() < deadline:
        try:
            await asyncio.wait_for(stats.done.wait(), 0.25)
        except TimeoutError:
            count = len(stats.latencies)
            if count != last_count:
                last_seen, last_count = time.monotonic(), count
            elif time.monotonic() - last_seen > idle:
                return


def main() -> None:
    spec = json.loads(sys.stdin.readline())
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    uvloop.run(run(spec))


if __name__ == "__main__":
    main()
