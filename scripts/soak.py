"""Soak: hold many SSE connections for minutes under steady publishing, and watch memory, file descriptors and loss.

    python scripts/soak.py --connections 10000 --minutes 10

It starts its own Redis and one gateway process, opens the connections (spread over channels) from this process
with a lean asyncio reader, publishes at a steady rate through the gateway, and reports:

- the gateway's RSS after warm-up and at the end, and the growth between them;
- the gateway's open file descriptors before the connections, while they are open, and after they are closed;
- per connection, events expected, received, lost, duplicated and out of order (every connection must receive every
  event published on its channel after it connected).

Loopback only; every loop is bounded by the run time.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import resource
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.servers import GatewayProcess, RedisProcess  # noqa: E402

try:
    import uvloop
except ImportError:  # pragma: no cover - uvicorn[standard] brings it
    uvloop = None


@dataclass
class Connection:
    channel: str
    received: list[int] = field(default_factory=list)
    ended: bool = False


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


async def hold(port: int, connection: Connection, ready: asyncio.Event, stop: asyncio.Event) -> None:
    """Read one stream until told to stop, keeping the sequence numbers of the events received."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        f"GET /events/{connection.channel} HTTP/1.1\r\nHost: soak\r\nAccept: text/event-stream\r\n\r\n".encode()
    )
    buffer = b""
    try:
        while not stop.is_set():
            chunk = await reader.read(65536)
            if not chunk:
                connection.ended = True
                return
            buffer += chunk
            if not ready.is_set() and b"\nretry:" in buffer:  # the body's line, not the X-SSE-Retry header
                ready.set()
            # Data lines look like "data: seq=<n>"; chunk framing lines never start with "data: ".
            *lines, buffer = buffer.split(b"\n")
            for line in lines:
                if line.startswith(b"data: seq="):
                    connection.received.append(int(line[10:]))
    finally:
        writer.close()


async def publish_steadily(base_url: str, channels: list[str], rate: float, until: float, log: dict) -> None:
    async with httpx.AsyncClient(base_url=base_url, timeout=10) as client:
        sequence = 0
        next_at = time.monotonic()
        while time.monotonic() < until:
            channel = channels[sequence % len(channels)]
            response = await client.post(f"/publish/{channel}", content=f"seq={sequence}")
            if response.status_code == 201:
                log.setdefault(channel, []).append(sequence)
            sequence += 1
            next_at += 1 / rate
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))


async def soak(connections: int, channels: int, minutes: float, rate: float, warmup: float) -> int:
    resource.setrlimit(resource.RLIMIT_NOFILE, (20000, 20000))
    redis = RedisProcess().start()
    env = {"SSE_GATEWAY_MAX_CONNECTIONS": str(connections + 100), "SSE_GATEWAY_LOG_LEVEL": "warning"}
    gateway = GatewayProcess(redis.url, env=env).start()
    pid = gateway.process.pid
    names = [f"soak-{i}" for i in range(channels)]
    stop = asyncio.Event()
    try:
        fds_idle, rss_idle = open_fds(pid), rss_kib(pid)
        held = [Connection(names[i % channels]) for i in range(connections)]
        tasks = []
        opened_at = time.monotonic()
        for start in range(0, connections, 500):  # in waves, so the listen backlog never overflows
            wave = []
            for connection in held[start : start + 500]:
                ready = asyncio.Event()
                tasks.append(asyncio.create_task(hold(gateway.port, connection, ready, stop)))
                wave.append(ready.wait())
            await asyncio.wait_for(asyncio.gather(*wave), 60)
        print(f"{connections} connections open in {time.monotonic() - opened_at:.1f}s", flush=True)

        published: dict[str, list[int]] = {}
        end = time.monotonic() + minutes * 60
        publisher = asyncio.create_task(publish_steadily(gateway.url, names, rate, end, published))
        await asyncio.sleep(warmup)
        rss_warm, fds_open = rss_kib(pid), open_fds(pid)
        samples = [rss_warm]
        while time.monotonic() < end:
            await asyncio.sleep(min(30, max(0.1, end - time.monotonic())))
            samples.append(rss_kib(pid))
            print(f"t={time.monotonic() - opened_at:.0f}s rss={samples[-1] / 1024:.1f} MiB", flush=True)
        await publisher
        await asyncio.sleep(2)  # the last events reach every connection
        rss_end = rss_kib(pid)
        stop.set()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.sleep(3)
        fds_after = open_fds(pid)

        expected = delivered = lost = duplicated = reordered = ended = 0
        for connection in held:
            want = published.get(connection.channel, [])
            got = connection.received
            expected += len(want)
            delivered += len(got)
            lost += len(set(want) - set(got))
            duplicated += len(got) - len(set(got))
            reordered += sum(1 for a, b in zip(got, got[1:], strict=False) if b < a)
            ended += connection.ended
        growth = (rss_end - rss_warm) / rss_warm * 100
        print()
        print(f"connections          {connections} on {channels} channels, {minutes:g} min, {rate:g} publishes/s")
        print(f"published            {sum(len(v) for v in published.values())}")
        print(f"deliveries expected  {expected}")
        print(f"delivered            {delivered}")
        print(f"lost                 {lost}")
        print(f"duplicated           {duplicated}")
        print(f"out of order         {reordered}")
        print(f"streams ended early  {ended}")
        per_connection = (rss_warm - rss_idle) / connections
        print(f"RSS before any       {rss_idle / 1024:.1f} MiB")
        print(f"RSS after warm-up    {rss_warm / 1024:.1f} MiB ({per_connection:.1f} KiB more per connection)")
        print(f"RSS at the end       {rss_end / 1024:.1f} MiB (growth {growth:+.2f}%; max {max(samples) / 1024:.1f})")
        print(f"open fds             {fds_idle} before, {fds_open} with connections, {fds_after} after closing")
        print("                     (after closing, the Redis connection pool may have grown, up to 64)")
        return 0 if lost == duplicated == reordered == ended == 0 and growth < 5 else 1
    finally:
        stop.set()
        gateway.stop()
        redis.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=10_000)
    parser.add_argument("--channels", type=int, default=100)
    parser.add_argument("--minutes", type=float, default=10)
    parser.add_argument("--rate", type=float, default=50, help="publishes a second, over all channels")
    parser.add_argument("--warmup", type=float, default=60, help="seconds before the first RSS sample")
    args = parser.parse_args()
    random.seed(0)
    if uvloop is not None:
        uvloop.install()
    return asyncio.run(soak(args.connections, args.channels, args.minutes, args.rate, args.warmup))


if __name__ == "__main__":
    sys.exit(main())
