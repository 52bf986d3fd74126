"""Does a client that stops reading delay the others? Publish-to-receipt latency of healthy clients, measured twice.

    python scripts/stall_delay.py --healthy 200 --stalled 20 --messages 300

Phase 1 has only healthy clients; phase 2 adds clients that open a stream and never read it (a small receive window,
so their buffers fill and the gateway must evict them). Each message carries its send time; the script prints
p50/p99/max latency of the healthy clients in each phase, and how many stalled clients the gateway evicted.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.servers import GatewayProcess, RedisProcess  # noqa: E402
from tests.streams import stalled_request  # noqa: E402

PAD = "x" * 16000  # big enough that a stalled client's socket buffers fill within the run


async def healthy_client(port: int, channel: str, latencies: list[float], ready: asyncio.Event, count: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET /events/{channel} HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n".encode())
    buffer, seen = b"", 0
    try:
        while seen < count:
            chunk = await asyncio.wait_for(reader.read(65536), 30)
            if not chunk:
                return
            buffer += chunk
            if not ready.is_set() and b"\nretry:" in buffer:  # the body's line, not the X-SSE-Retry header
                ready.set()
            *lines, buffer = buffer.split(b"\n")
            now = time.time()
            for line in lines:
                if line.startswith(b"data: t="):
                    latencies.append(now - float(line[8:].split(b";")[0]))
                    seen += 1
    finally:
        writer.close()


async def phase(gateway: GatewayProcess, channel: str, healthy: int, stalled: int, messages: int) -> list[float]:
    latencies: list[float] = []
    readies = [asyncio.Event() for _ in range(healthy)]
    tasks = [
        asyncio.create_task(healthy_client(gateway.port, channel, latencies, ready, messages)) for ready in readies
    ]
    await asyncio.wait_for(asyncio.gather(*(r.wait() for r in readies)), 30)
    socks = [stalled_request(gateway.port, f"/events/{channel}") for _ in range(stalled)]
    await asyncio.sleep(0.5)
    async with httpx.AsyncClient(base_url=gateway.url, timeout=10) as client:
        for n in range(messages):
            await client.post(f"/publish/{channel}", content=f"t={time.time()};n={n};{PAD}")
            await asyncio.sleep(0.005)
    await asyncio.wait_for(asyncio.gather(*tasks), 60)
    for sock in socks:
        sock.close()
    return latencies


def summary(latencies: list[float]) -> str:
    ms = sorted(x * 1000 for x in latencies)
    p99 = ms[int(len(ms) * 0.99) - 1]
    return f"n={len(ms)} p50={statistics.median(ms):.1f} ms p99={p99:.1f} ms max={ms[-1]:.1f} ms"


async def main(healthy: int, stalled: int, messages: int) -> None:
    redis = RedisProcess().start()
    env = {"SSE_GATEWAY_CLIENT_BUFFER_EVENTS": "64", "SSE_GATEWAY_LOG_LEVEL": "warning"}
    gateway = GatewayProcess(redis.url, env=env).start()
    try:
        alone = await phase(gateway, "calm", healthy, 0, messages)
        with_stalled = await phase(gateway, "stalls", healthy, stalled, messages)
        metrics = httpx.get(f"{gateway.url}/metrics").text
        evicted = sum(
            float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines() if line.startswith("sse_evictions_total{")
        )
        print(f"healthy clients only:           {summary(alone)}")
        print(f"with {stalled} clients not reading: {summary(with_stalled)}")
        print(f"stalled clients evicted:        {evicted:.0f} of {stalled}")
    finally:
        gateway.stop()
        redis.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--healthy", type=int, default=200)
    parser.add_argument("--stalled", type=int, default=20)
    parser.add_argument("--messages", type=int, default=300)
    args = parser.parse_args()
    asyncio.run(main(args.healthy, args.stalled, args.messages))
