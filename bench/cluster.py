"""The gateway on a Redis Cluster: why sharded Pub/Sub, and what more gateway processes give.

    .venv/bin/python -m bench.cluster                 # both parts, 3 rounds each
    .venv/bin/python -m bench.cluster --part redis    # Redis CPU per publish, PUBLISH against SPUBLISH
    .venv/bin/python -m bench.cluster --part gateways # publishes and deliveries per second, 1, 2 and 3 gateways

Part "redis": the gateway's own publish script on one 3-primary, 3-replica cluster (Debian's redis-server), run by
the cluster broker with the live send as classic PUBLISH (broadcast over the cluster bus to every node) and as
SPUBLISH (kept on the slot's node), rounds alternating; each publish goes to one of 6 channels spread over the three
primaries, with one subscriber per channel on its own node (a sharded subscriber for SPUBLISH, a classic one for
PUBLISH). It reports the CPU of all six Redis processes per publish (utime + stime from /proc).

Part "gateways": 1, 2 and 3 gateway processes on the cluster, each with the same number of SSE clients spread over 6
channels on all primaries; a publisher posts to the gateways in turn. It reports acknowledged publishes per second
and deliveries per second (events received by all clients, counted as they arrive), until every event reached every
client. The machine has 2 cores shared by Redis, the gateways and this process: read the ratios, not the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
import uuid

import httpx
import redis

from bench.measure import cpu_seconds
from gateway.brokers.cluster import ClusterBroker
from gateway.config import Settings
from tests.brokers.test_contract import spanning_channels
from tests.clusters import RedisClusterProcesses
from tests.servers import GatewayProcess, RedisProcess


def _channels(cluster: RedisClusterProcesses) -> list[str]:
    base = "b-" + uuid.uuid4().hex[:6]
    return spanning_channels(cluster, base + "a") + spanning_channels(cluster, base + "b")


async def _publish_round(cluster: RedisClusterProcesses, command: str, publishes: int) -> float:
    """Redis CPU microseconds per publish, with the live send made as ``command``."""
    channels = _channels(cluster)
    broker = ClusterBroker(Settings(redis_url=cluster.url, redis_cluster="on"))
    broker.publish_command = command  # the benchmark's switch: what the live send inside the script is
    subscribers = []
    for channel in channels:
        node = cluster.owner_of(f"sse:{{{channel}}}")
        pubsub = redis.Redis(port=node.port).pubsub()
        (pubsub.ssubscribe if command == "SPUBLISH" else pubsub.subscribe)(f"sse:{{{channel}}}")
        subscribers.append(pubsub)
    pids = [node.process.pid for node in cluster.nodes if node.process is not None]
    try:
        await broker.client.initialize()
        await broker.publish(channels[0], "warm-up")
        before = cpu_seconds(pids)
        semaphore = asyncio.Semaphore(32)

        async def one(n: int) -> None:
            async with semaphore:
                await broker.publish(channels[n % len(channels)], f"{n:08d}" + "x" * 56)

        await asyncio.gather(*(one(n) for n in range(publishes)))
        return (cpu_seconds(pids) - before) / publishes * 1e6
    finally:
        for pubsub in subscribers:
            pubsub.close()
        await broker.close()


def redis_part(rounds: int, publishes: int) -> None:
    cluster = RedisClusterProcesses("redis").start()
    try:
        results: dict[str, list[float]] = {"PUBLISH": [], "SPUBLISH": []}
        for _ in range(rounds):
            for command in results:
                cost = asyncio.run(_publish_round(cluster, command, publishes))
                results[command].append(cost)
                print(f"{command:>8}: {cost:6.1f} us of Redis CPU per publish (all 6 nodes)")
        classic, sharded = (statistics.median(results[c]) for c in ("PUBLISH", "SPUBLISH"))
        ratio = sharded / classic
        print(f"median: PUBLISH {classic:.1f} us, SPUBLISH {sharded:.1f} us; SPUBLISH / PUBLISH = {ratio:.2f}x")
    finally:
        cluster.stop()


class Counter:
    """SSE clients on raw sockets that count the events they receive (``id:`` lines), nothing more."""

    def __init__(self) -> None:
        self.delivered = 0

    async def client(self, port: int, channel: str, ready: asyncio.Event, opened: list[int]) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(f"GET /events/{channel} HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n".encode())
        carry = b""
        try:
            while True:
                chunk = await reader.read(65536)
                if not chunk:
                    return
                if b"\nretry:" in chunk and not ready.is_set():  # the body's line, not the X-SSE-Retry header
                    opened.append(1)
                    self.delivered -= 1  # the opening frame's id line is not an event
                data = carry + chunk
                self.delivered += data.count(b"\nid: ") + data.startswith(b"id: ")
                carry = data[-4:]
        finally:
            writer.close()


async def _gateways_round(
    cluster: RedisClusterProcesses, count: int, clients: int, publishes: int, single: str | None = None
) -> tuple:
    """One round; with ``single`` (a Redis URL), one gateway on that single Redis instead, as the baseline."""
    channels = _channels(cluster)
    url = single or cluster.url
    gateways = [GatewayProcess(url, env={"SSE_GATEWAY_HEARTBEAT": "30"}).start() for _ in range(count)]
    counter = Counter()
    ready = asyncio.Event()
    opened: list[int] = []
    try:
        readers = [
            asyncio.create_task(counter.client(g.port, channels[i % len(channels)], ready, opened))
            for g in gateways
            for i in range(clients)
        ]
        while len(opened) < len(readers):
            await asyncio.sleep(0.01)  # polling the clients' progress
        ready.set()
        # Each event reaches the clients of its channel on every gateway: a sixth of each gateway's clients.
        expected = publishes * count * clients // len(channels)
        acknowledged = 0
        started = time.monotonic()
        async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=32)) as client:
            semaphore = asyncio.Semaphore(16)

            async def one(n: int) -> None:
                nonlocal acknowledged
                async with semaphore:
                    gateway = gateways[n % count]
                    response = await client.post(
                        f"{gateway.url}/publish/{channels[n % len(channels)]}", content=f"{n:08d}" + "x" * 56
                    )
                    acknowledged += response.status_code == 201

            await asyncio.gather(*(one(n) for n in range(publishes)))
        published = time.monotonic() - started
        deadline = time.monotonic() + 60
        while counter.delivered < expected and time.monotonic() < deadline:
            await asyncio.sleep(0.01)  # polling the count
        delivered = time.monotonic() - started
        for reader in readers:
            reader.cancel()
        return acknowledged / published, counter.delivered / delivered, counter.delivered, expected
    finally:
        for gateway in gateways:
            gateway.stop()


def gateways_part(rounds: int, clients: int, publishes: int) -> None:
    cluster = RedisClusterProcesses("redis").start()
    single = RedisProcess().start()
    try:
        rates: dict[str, list[tuple[float, float]]] = {"1 on one Redis": [], "1": [], "2": [], "3": []}
        for _ in range(rounds):
            for label in rates:
                count = int(label.split()[0])
                url = single.url if "one Redis" in label else None
                publish_rate, delivery_rate, delivered, expected = asyncio.run(
                    _gateways_round(cluster, count, clients, publishes, url)
                )
                rates[label].append((publish_rate, delivery_rate))
                print(
                    f"{label} gateway(s), {clients} clients each: {publish_rate:7.0f} publishes/s, "
                    f"{delivery_rate:8.0f} deliveries/s ({delivered} of {expected})"
                )
        base_publish = statistics.median(r[0] for r in rates["1"])
        base_delivery = statistics.median(r[1] for r in rates["1"])
        for label, values in rates.items():
            publish_rate = statistics.median(r[0] for r in values)
            delivery_rate = statistics.median(r[1] for r in values)
            print(
                f"median, {label} gateway(s): {publish_rate:7.0f} publishes/s ({publish_rate / base_publish:.2f}x "
                f"one on the cluster), {delivery_rate:8.0f} deliveries/s ({delivery_rate / base_delivery:.2f}x)"
            )
    finally:
        single.stop()
        cluster.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--part", choices=("redis", "gateways", "both"), default="both")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--publishes", type=int, default=3000)
    parser.add_argument("--clients", type=int, default=60, help="SSE clients per gateway (a multiple of 6)")
    args = parser.parse_args()
    if args.part in ("redis", "both"):
        redis_part(args.rounds, args.publishes * 3)
    if args.part in ("gateways", "both"):
        gateways_part(args.rounds, args.clients, args.publishes)


if __name__ == "__main__":
    main()
