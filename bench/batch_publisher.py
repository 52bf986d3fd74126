"""Batch publishes for bench.publish: ``python -m bench.batch_publisher PORT CHANNEL EVENTS BATCHES CONNECTIONS``.

Posts BATCHES NDJSON batches of EVENTS 64-byte events each to ``POST /publish`` on 127.0.0.1:PORT, over CONNECTIONS
keep-alive connections at once, and prints one JSON line: events acknowledged, events failed, and the seconds taken.
The bodies are built before the clock starts, so the figure is the gateway's and Redis's, not this process's JSON.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time

import httpx


async def main(port: int, channel: str, events: int, batches: int, connections: int) -> None:
    line = json.dumps({"channel": channel, "data": "x" * 64}).encode() + b"\n"
    body = line * events
    queue: asyncio.Queue[int] = asyncio.Queue()
    for n in range(batches):
        queue.put_nowait(n)
    acknowledged = failed = 0

    async def sender(client: httpx.AsyncClient) -> None:
        nonlocal acknowledged, failed
        while not queue.empty():
            queue.get_nowait()
            response = await client.post(f"http://127.0.0.1:{port}/publish", content=body)
            answer = response.json()
            if response.status_code in (201, 207):
                acknowledged += answer["published"]
                failed += answer["failed"]
            else:
                failed += events

    limits = httpx.Limits(max_connections=connections)
    async with httpx.AsyncClient(timeout=60, limits=limits) as client:
        started = time.monotonic()
        await asyncio.gather(*(sender(client) for _ in range(connections)))
        seconds = time.monotonic() - started
    print(json.dumps({"acknowledged": acknowledged, "failed": failed, "seconds": seconds}))


if __name__ == "__main__":
    port, channel, events, batches, connections = sys.argv[1:6]
    asyncio.run(main(int(port), channel, int(events), int(batches), int(connections)))
