"""Real processes to break, and live traffic through them, recorded by the invariant checker.

``Rig`` is Redis with AOF (``appendfsync always``, so a SIGKILL loses nothing acknowledged) and one gateway on it;
``ClusterRig`` the same on a Redis Cluster.
``Workload`` is many resuming subscribers, single- and multi-channel, over a few channels, and one continuous
publisher per channel; every publish attempt and every received event goes into a ``Checker``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from typing import Any

import httpx
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster

from gateway.brokers.connections import REDIS_FAILURES
from gateway.brokers.single import PUBLISH_SCRIPT
from tests.clusters import RedisClusterProcesses
from tests.invariants import Checker, Report, SubscriberLog
from tests.servers import GatewayProcess, RedisProcess
from tests.subscribers import ResumingSubscriber, new_stream_client


class Rig:
    def __init__(self) -> None:
        self.redis = RedisProcess(appendonly=True)
        self.gateway: GatewayProcess | None = None
        self._config: tuple[tuple[tuple[str, str], ...], tuple[str, ...]] | None = None

    async def start(self) -> Rig:
        await asyncio.to_thread(self.redis.start)
        return self

    async def configure(self, env: dict[str, str], args: tuple[str, ...]) -> GatewayProcess:
        """A running gateway with these settings: the current one, or a new one if the settings differ."""
        config = (tuple(sorted(env.items())), args)
        alive = self.gateway is not None and self.gateway.process is not None and self.gateway.process.poll() is None
        if self.gateway is None or config != self._config or not alive:
            if self.gateway is not None:
                await asyncio.to_thread(self.gateway.stop)
            self.gateway = GatewayProcess(self.redis.url, *args, env=env)
            self._config = config
            await asyncio.to_thread(self.gateway.start)
        return self.gateway

    @property
    def buffer_maxlen(self) -> int:
        args = list(self._config[1]) if self._config else []
        return int(args[args.index("--buffer-maxlen") + 1]) if "--buffer-maxlen" in args else 1000

    async def stop(self) -> None:
        await asyncio.to_thread(self.stop_now)

    def stop_now(self) -> None:
        """Stop both processes (SIGCONT first, in case Redis is paused); safe to call more than once."""
        if self.gateway is not None:
            self.gateway.stop()
        self.redis.stop()

    def redis_client(self) -> Any:
        """A client of the rig's Redis for the workload's own reads and script publishes."""
        return aioredis.Redis.from_url(self.redis.url, socket_timeout=5)


class ClusterRig(Rig):
    """The same rig on a Redis Cluster: 3 primaries with 2 replicas each, so a promoted replica keeps one."""

    def __init__(self, kind: str = "redis") -> None:
        super().__init__()
        self.redis = RedisClusterProcesses(kind, replicas=2)  # type: ignore[assignment]

    def redis_client(self) -> Any:
        first = self.redis.running()[0]
        return RedisCluster(host="127.0.0.1", port=first.port, socket_timeout=5)


def channel_names(count: int) -> list[str]:
    prefix = "f" + uuid.uuid4().hex[:8]
    return [f"{prefix}-{number}" for number in range(count)]


def channels_of(number: int, channels: list[str]) -> tuple[str, ...]:
    """Subscriber ``number``'s channels: half single-channel, a quarter two channels, a quarter up to four."""
    kind, count = number % 4, len(channels)
    width = 1 if kind < 2 else 2 if kind == 2 else min(4, count)
    return tuple(channels[(number + step) % count] for step in range(min(width, count)))


class Workload:
    def __init__(self, rig: Rig, channels: list[str], *, subscribers: int, rate: float, url: str | None = None) -> None:
        """``url``: where subscribers and publishers go, the rig's gateway unless given (a load balancer, say)."""
        assert rig.gateway is not None
        self.rig = rig
        self.url = url or rig.gateway.url
        self.channels = channels
        self.checker = Checker()
        self.stream_client = new_stream_client()
        self.subscribers = [
            ResumingSubscriber(self.url, self.checker.subscriber(channels_of(n, channels)), client=self.stream_client)
            for n in range(subscribers)
        ]
        self._interval = len(channels) / rate
        self._publish_client = httpx.AsyncClient(timeout=15.0)
        self._publishers: list[asyncio.Task[None]] = []
        self._publishing = False
        self._sequence = 0
        self.failures: list[str] = []

    def add_subscriber(self, log: SubscriberLog, last_event_id: str = "") -> ResumingSubscriber:
        subscriber = ResumingSubscriber(self.url, log, client=self.stream_client, last_event_id=last_event_id)
        self.subscribers.append(subscriber.start())
        return subscriber

    async def start(self, timeout: float = 30.0) -> None:
        for subscriber in self.subscribers:
            subscriber.start()
        if not await wait_for(lambda: all(s.connected for s in self.subscribers), timeout):
            waiting = sum(not s.connected for s in self.subscribers)
            self.failures.append(f"{waiting} subscribers had no open stream {timeout:.0f}s after the start")
        self._publishing = True
        self._publishers = [asyncio.create_task(self._publish_loop(channel)) for channel in self.channels]

    async def run_for(self, seconds: float) -> None:
        await asyncio.sleep(seconds)

    def unacknowledged(self) -> int:
        return sum(self.checker.unacked_reasons.values())

    async def publish(self, channel: str, data: str, event: str | None = None) -> bool:
        """One publish over HTTP, recorded as acknowledged only on 201."""
        try:
            response = await self._publish_client.post(
                f"{self.url}/publish/{channel}", content=data.encode(), params={"event": event} if event else None
            )
        except httpx.HTTPError as exc:
            self.checker.unacknowledged(channel, data, type(exc).__name__, event)
            return False
        if response.status_code != 201:
            self.checker.unacknowledged(channel, data, f"status {response.status_code}", event)
            return False
        self.checker.acknowledged(channel, response.json()["id"], data, event)
        return True

    async def burst(self, channel: str, count: int, *, size: int = 0) -> None:
        """``count`` events on ``channel`` as fast as one connection allows, ``size`` bytes of padding each."""
        for _ in range(count):
            await self.publish(channel, f"{channel} burst {self._next()} " + "x" * size)

    async def publish_direct(self, per_channel: int) -> None:
        """Publish with the gateway's script straight into Redis, as any program may; acknowledged by its id."""
        client = self.rig.redis_client()
        try:
            for _ in range(per_channel):
                for channel in self.channels:
                    data = f"{channel} direct {self._next()}"
                    keys = [f"sse:{{{channel}}}:buffer", f"sse:{{{channel}}}"]
                    try:
                        event_id = await client.eval(
                            PUBLISH_SCRIPT, 2, *keys, self.rig.buffer_maxlen, 3600000, "", data
                        )
                    except REDIS_FAILURES as exc:
                        self.checker.unacknowledged(channel, data, f"script {type(exc).__name__}")
                    else:
                        self.checker.acknowledged(channel, event_id.decode(), data)
        finally:
            await client.aclose()

    async def recovery_probe(self, count: int = 20) -> tuple[int, int]:
        """Publishes refused and streams turned away among ``count`` concurrent ones of each; both 0 when healthy."""
        channels = [self.channels[n % len(self.channels)] for n in range(count)]
        acked = await asyncio.gather(*(self.publish(c, f"{c} probe {self._next()}") for c in channels))
        opened = await asyncio.gather(*(opens_with_an_id(self.url, c) for c in channels))
        return acked.count(False), opened.count(False)

    async def buffered_ids(self) -> dict[str, list[str]] | None:
        """Every id each channel's replay buffer still holds, or None if Redis cannot say."""
        client = self.rig.redis_client()
        try:
            return {
                channel: [entry_id.decode() for entry_id, _ in await client.xrange(f"sse:{{{channel}}}:buffer")]
                for channel in self.channels
            }
        except REDIS_FAILURES:
            return None
        finally:
            await client.aclose()

    async def stop_publishing(self) -> None:
        self._publishing = False
        if self._publishers:
            await asyncio.gather(*self._publishers, return_exceptions=True)

    async def finish(self, settle: float) -> Report:
        """Stop publishing, wait (bounded) until every subscriber has caught up, stop them, and judge."""
        await self.stop_publishing()
        settled = await self.checker.wait_settled(settle)
        behind = [log.name for log in self.checker.behind()]
        for subscriber in self.subscribers:
            await subscriber.stop()
        await self.stream_client.aclose()
        await self._publish_client.aclose()
        report = self.checker.check(buffered=await self.buffered_ids())
        if not settled:
            report.problems.insert(0, f"still behind after {settle:.0f}s: {', '.join(behind[:10])}")
        return report

    async def _publish_loop(self, channel: str) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 3600
        while self._publishing and loop.time() < deadline:
            number = self._next()
            data = f"{channel} #{number}" + ("\nsecond line" if number % 5 == 0 else "")
            data += " \u2028 é" if number % 7 == 0 else ""  # not a line break in SSE, whatever str.splitlines says
            await self.publish(channel, data, "tick" if number % 3 == 0 else None)
            await asyncio.sleep(self._interval)

    def _next(self) -> int:
        self._sequence += 1
        return self._sequence


async def wait_for(condition, timeout: float, interval: float = 0.05) -> bool:
    """Poll ``condition`` until it holds or ``timeout`` passes (a bounded wait, never a timing assertion)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(interval)
    return True


async def opens_with_an_id(base_url: str, channel: str) -> bool:
    """Whether a fresh stream of ``channel`` opens with its starting id (it does not when Redis fails it)."""
    head = b""
    with contextlib.suppress(httpx.HTTPError):
        async with (
            httpx.AsyncClient(timeout=5) as client,
            client.stream("GET", f"{base_url}/events/{channel}") as response,
        ):
            async for chunk in response.aiter_raw():
                head += chunk
                if b"\n\n" in head:
                    break
    return b"\nid: " in head.partition(b"\n\n")[0]


async def http_status(url: str) -> int | None:
    with contextlib.suppress(httpx.HTTPError):
        async with httpx.AsyncClient(timeout=5) as client:
            return (await client.get(url)).status_code
    return None
