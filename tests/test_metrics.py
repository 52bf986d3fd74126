"""GET /metrics: Prometheus text that counts what the gateway did, with one worker and with several.

Every count is a delta the test itself caused, read before and after, on a gateway and a Redis of this module's own
(its Redis is killed once), so what other tests did cannot satisfy a check.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.multiprocess import MultiProcessCollector

from tests.servers import GatewayProcess, RedisProcess, wait_until
from tests.streams import open_stream, publish, publish_many, stalled_request

MAX_CONNECTIONS = 3
PRIVATE = {
    "SSE_GATEWAY_MAX_CONNECTIONS": str(MAX_CONNECTIONS),
    "SSE_GATEWAY_CLIENT_BUFFER_EVENTS": "16",
    "SSE_GATEWAY_SEND_TIMEOUT": "2",
}
BUFFER_MAXLEN = 5


def _value(text: str, name: str, labels: str = "") -> float:
    """A sample's value; 0 when absent (a labelled counter appears on first use)."""
    match = re.search(rf"^{re.escape(name)}{re.escape(labels)} ([0-9.e+-]+)$", text, re.MULTILINE)
    return float(match[1]) if match else 0.0


class Metrics:
    """The gateway's /metrics, read now, and what changed since an earlier reading."""

    def __init__(self, gateway: GatewayProcess) -> None:
        self.gateway = gateway
        self.text = httpx.get(f"{gateway.url}/metrics", timeout=10).text

    def value(self, name: str, labels: str = "") -> float:
        return _value(self.text, name, labels)

    def since(self, earlier: Metrics, name: str, labels: str = "") -> float:
        return self.value(name, labels) - earlier.value(name, labels)


@pytest.fixture(scope="module")
def private_redis() -> Iterator[RedisProcess]:
    server = RedisProcess().start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def private_gateway(private_redis: RedisProcess) -> Iterator[GatewayProcess]:
    process = GatewayProcess(private_redis.url, "--buffer-maxlen", str(BUFFER_MAXLEN), env=PRIVATE).start()
    yield process
    process.stop()


@pytest.fixture
def gateway(private_gateway: GatewayProcess, private_redis: RedisProcess) -> GatewayProcess:
    """The module's gateway, ready and with no stream left open by an earlier test."""
    if not private_redis.answers():
        private_redis.start()
    wait_until(private_gateway.ready, what="the module's gateway ready")
    wait_until(lambda: Metrics(private_gateway).value("sse_open_streams") == 0, what="no stream open")
    return private_gateway


async def test_metrics_count_streams_messages_frames_replays_and_publishes(gateway, channel):
    before = Metrics(gateway)
    first = await publish(gateway.url, channel, "one")
    async with open_stream(f"{gateway.url}/events/{channel}", last_event_id=first) as stream:
        await stream.read_raw_until(b"retry:")
        during = httpx.get(f"{gateway.url}/metrics")
        await publish(gateway.url, channel, "two")
        await stream.next_event()
    after = Metrics(gateway)
    assert during.headers["content-type"].startswith("text/plain")
    assert _value(during.text, "sse_open_streams") - before.value("sse_open_streams") == 1
    assert after.since(before, "sse_messages_in_total") == 1
    assert after.since(before, "sse_frames_out_total") == 1
    assert after.since(before, "sse_replays_total", '{result="hit"}') == 1
    assert after.since(before, "sse_replays_total", '{result="miss"}') == 0
    assert after.since(before, "sse_publishes_total", '{outcome="published"}') == 2
    assert after.since(before, "sse_publish_seconds_count") == 2
    assert after.since(before, "sse_fanout_lag_seconds_count") == 1


async def test_a_resume_past_the_trimmed_buffer_counts_one_gap_event_and_a_replay_miss(gateway, channel):
    first = await publish(gateway.url, channel, "soon trimmed")
    # The buffer is trimmed approximately (whole nodes of about 100 entries), so well past its length.
    await publish_many(gateway.url, channel, [f"m{n}" for n in range(250)])
    before = Metrics(gateway)
    async with open_stream(f"{gateway.url}/events/{channel}", last_event_id=first) as stream:
        gap = await stream.next_event()
        assert gap.event == "gap", gap
    after = Metrics(gateway)
    assert after.since(before, "sse_gap_events_total") == 1
    assert after.since(before, "sse_replays_total", '{result="miss"}') == 1
    assert after.since(before, "sse_replays_total", '{result="hit"}') == 0


async def test_a_client_leaving_is_counted_as_a_stream_closed_by_the_client(gateway, channel):
    before = Metrics(gateway)
    async with open_stream(f"{gateway.url}/events/{channel}") as stream:
        await stream.read_raw_until(b"retry:")
    # The gateway sees the disconnect on its own time: wait for the count, bounded.
    closed = '{reason="client_left"}'
    wait_until(lambda: Metrics(gateway).since(before, "sse_streams_closed_total", closed) >= 1, what="the close")
    after = Metrics(gateway)
    assert after.since(before, "sse_streams_closed_total", closed) == 1
    assert after.value("sse_open_streams") == before.value("sse_open_streams")


async def test_a_client_that_stops_reading_is_evicted_and_counted(gateway, channel):
    before = Metrics(gateway)
    sock = stalled_request(gateway.port, f"/events/{channel}")
    try:
        wait_until(lambda: Metrics(gateway).since(before, "sse_open_streams") == 1, what="the stalled stream open")
        wait_until(lambda: gateway.log().count(f"stream opened channels={channel} ") == 1, what="its log line")

        def evicted() -> float:
            now = Metrics(gateway)
            return sum(now.since(before, "sse_evictions_total", f'{{reason="{r}"}}') for r in ("overflow", "stalled"))

        # 16 kB events until the socket's buffers are full and the client's queue (16 frames) overflows, or its
        # write has waited past the 2 s send timeout: either is an eviction.
        async with asyncio.timeout(40):
            while not evicted():
                await publish_many(gateway.url, channel, ["x" * 16000] * 25)
    finally:
        sock.close()
    after = Metrics(gateway)
    for reason in ("overflow", "stalled"):
        labels = f'{{reason="{reason}"}}'
        evictions = after.since(before, "sse_evictions_total", labels)
        assert evictions in (0, 1)
        assert after.since(before, "sse_streams_closed_total", labels) == evictions
    assert evicted() == 1


async def test_streams_past_the_connection_limit_are_turned_away_and_counted(gateway, channel):
    before = Metrics(gateway)
    async with contextlib.AsyncExitStack() as held:
        for number in range(MAX_CONNECTIONS):
            stream = await held.enter_async_context(open_stream(f"{gateway.url}/events/{channel}-{number}"))
            await stream.read_raw_until(b"retry:")
        async with httpx.AsyncClient(timeout=10) as client:
            refused = await client.get(f"{gateway.url}/events/{channel}-extra")
        during = Metrics(gateway)
    assert (refused.status_code, refused.headers["x-sse-refused"]) == (200, "max_connections")
    assert during.since(before, "sse_refused_total", '{limit="max_connections"}') == 1
    assert during.since(before, "sse_open_streams") == MAX_CONNECTIONS


@pytest.mark.timeout(60)
async def test_a_lost_redis_connection_is_counted_as_a_reconnect(gateway, private_redis, channel):
    before = Metrics(gateway)
    await asyncio.to_thread(private_redis.kill)
    await asyncio.to_thread(private_redis.start)
    await asyncio.to_thread(wait_until, gateway.ready, what="the gateway ready after Redis restarted")
    # Ready means subscribed again: a publish now reaches a new stream.
    async with open_stream(f"{gateway.url}/events/{channel}") as stream:
        await stream.read_raw_until(b"retry:")
        event_id = await publish(gateway.url, channel, "after the restart")
        assert (await stream.next_event()).id == event_id
    assert Metrics(gateway).since(before, "sse_redis_reconnects_total") >= 1


def _per_process(directory: Path, name: str, labels: dict[str, str]) -> dict[int, float]:
    """One counter's value in each process's file of a multiprocess metrics directory (counter_<pid>.db)."""
    found = {}
    for path in directory.glob("counter_*.db"):
        for metric in MultiProcessCollector.merge([str(path)]):
            for sample in metric.samples:
                if sample.name == name and sample.labels == labels:
                    found[int(path.stem.split("_")[1])] = sample.value
    return found


@pytest.mark.timeout(60)
async def test_metrics_add_up_across_workers_and_both_workers_served(redis_server, channel, tmp_path):
    gateway = GatewayProcess(redis_server.url, "--workers", "2", env={"PROMETHEUS_MULTIPROC_DIR": str(tmp_path)})
    gateway.start()
    published = {"outcome": "published"}
    try:
        sent = 0
        # New connections until both workers have taken some: the kernel, not the test, picks the worker.
        async with asyncio.timeout(40):
            while len(_per_process(tmp_path, "sse_publishes_total", published)) < 2 or sent < 20:
                async with httpx.AsyncClient(base_url=gateway.url) as fresh:
                    assert (await fresh.post(f"/publish/{channel}", content=str(sent))).status_code == 201
                sent += 1
        async with httpx.AsyncClient(base_url=gateway.url) as client:
            text = (await client.get("/metrics")).text
        per_worker = _per_process(tmp_path, "sse_publishes_total", published)
    finally:
        gateway.stop()
    assert len(per_worker) == 2 and all(count > 0 for count in per_worker.values()), per_worker
    assert sum(per_worker.values()) == sent
    assert _value(text, "sse_publishes_total", '{outcome="published"}') == sent
