"""The publisher: POSTs messages through a server's own HTTP publish endpoint, run as its own process.

It reads a JSON spec on the first line of stdin and prints one JSON result line. Each channel is served by one
keep-alive connection of a small pool, in order, so every channel's messages reach the server in sequence. The body
starts with the send time: ``t=<time_ns>;c=<channel index>;s=<seq>;`` then padding to ``size`` bytes. With a
``rate`` (messages per second per channel) message ``s`` of every channel is due at ``start + s / rate``, and that due
time is the one stamped; without a rate they go as fast as the server answers, stamped when sent.
"""

from __future__ import annotations

import asyncio
import json
import resource
import sys
import time
from collections import Counter

import uvloop


class Connection:
    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self, path: str, body: bytes) -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        assert self.reader is not None
        head = (
            f"POST {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\nContent-Type: text/plain\r\n"
            f"Accept: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode()
        self.writer.write(head + body)
        response_head = (await self.reader.readuntil(b"\r\n\r\n")).lower()
        status = int(response_head[9:12])
        if b"transfer-encoding: chunked" in response_head:
            answer = b""
            while size := int((await self.reader.readuntil(b"\r\n")).split(b";")[0], 16):
                answer += (await self.reader.readexactly(size + 2))[:-2]
            await self.reader.readuntil(b"\r\n")
        else:
            length = 0
            for line in response_head.split(b"\r\n"):
                if line.startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
            answer = await self.reader.readexactly(length)
        if b"connection: close" in response_head:
            self.close()
        return status, answer

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


def message(channel: int, seq: int, size: int, sent_ns: int) -> bytes:
    head = f"t={sent_ns};c={channel};s={seq};".encode()
    return head + b"x" * max(0, size - len(head))


async def run(spec: dict) -> dict:
    paths: list[str] = spec["paths"]
    rate: float = spec.get("rate") or 0.0
    pool = max(1, min(spec.get("pool", 4), len(paths)))
    statuses: Counter[int] = Counter()
    sends: list[int] = []
    lag = [0.0]
    start = time.monotonic() + 0.05
    start_ns = time.time_ns() + 50_000_000

    async def worker(index: int) -> None:
        connection = Connection(spec["host"], spec["port"])
        mine = [(channel, path) for channel, path in enumerate(paths) if channel % pool == index]
        try:
            for seq in range(spec["messages"]):
                if rate:
                    due = start + seq / rate
                    delay = due - time.monotonic()
                    if delay > 0:
                        await asyncio.sleep(delay)
                    else:
                        lag[0] = max(lag[0], -delay)
                for channel, path in mine:
                    now = time.time_ns()
                    sends.append(now)
                    # Paced, the time stamped is when the message was due: a server that slows down its own
                    # publish endpoint cannot hide its backlog from the latency (no coordinated omission).
                    stamp = start_ns + int(seq * 1e9 / rate) if rate else now
                    try:
                        status, _ = await asyncio.wait_for(
                            connection.post(path, message(channel, seq, spec.get("size", 100), stamp)), 10
                        )
                    except (OSError, asyncio.IncompleteReadError, TimeoutError, ValueError):
                        status = 0
                        connection.close()
                    statuses[status] += 1
        finally:
            connection.close()

    await asyncio.gather(*(worker(i) for i in range(pool)))
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {
        "published": sum(n for s, n in statuses.items() if 200 <= s < 300),
        "errors": sum(n for s, n in statuses.items() if not 200 <= s < 300),
        "statuses": {str(k): v for k, v in statuses.items()},
        "first_send_ns": min(sends, default=0),
        "last_send_ns": max(sends, default=0),
        "max_lag_ms": lag[0] * 1000,
        "cpu_s": usage.ru_utime + usage.ru_stime,
    }


def main() -> None:
    spec = json.loads(sys.stdin.readline())
    print(json.dumps(uvloop.run(run(spec))), flush=True)


if __name__ == "__main__":
    main()
