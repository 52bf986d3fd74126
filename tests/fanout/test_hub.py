"""The hub against real processes: a subscription Redis does not confirm in time ends the stream cleanly; one
stream's failing tick leaves the others' heartbeats going."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator

import pytest

from gateway.brokers.single import SingleNodeBroker
from gateway.config import Settings
from gateway.fanout.hub import Hub
from gateway.fanout.subscriber import HEARTBEAT, Subscriber
from tests.servers import GatewayProcess, RedisProcess, wait_until
from tests.streams import open_stream, publish


@pytest.fixture
def own_gateway(own_redis: RedisProcess) -> Iterator[GatewayProcess]:
    process = GatewayProcess(own_redis.url).start()
    yield process
    process.stop()


async def _fresh_upstream(gateway: GatewayProcess, channel: str, stream) -> None:
    """Have the Pub/Sub connection hear a message now, so a pause of a few seconds stays inside its silence limit."""
    event_id = await publish(gateway.url, channel, "fresh")
    assert (await stream.next_event()).id == event_id


@pytest.mark.timeout(60)
async def test_a_subscription_redis_does_not_confirm_ends_the_stream_and_the_client_resumes_later(
    own_redis, own_gateway, channel
):
    gateway = own_gateway
    keeper_channel = f"{channel}-keeper"
    async with open_stream(f"{gateway.url}/events/{keeper_channel}") as keeper_stream:
        await keeper_stream.read_raw_until(b"retry:")
        before = await publish(gateway.url, channel, "before")
        await _fresh_upstream(gateway, keeper_channel, keeper_stream)
        own_redis.pause()
        try:
            # A resume needs no Redis to start: it opens, sends its SUBSCRIBE, and waits for an answer that never comes.
            async with open_stream(f"{gateway.url}/events/{channel}", last_event_id=before) as stream:
                await stream.read_raw_until(b"retry:")
                assert await stream.ended(timeout=20), "the gateway ended the stream"
        finally:
            own_redis.resume()
        # A clean end a client retries from (a 5xx would stop a browser for good), at the position it asked for.
        assert stream.raw.endswith(f"id: {before}\n\n".encode())
        assert b"data:" not in stream.raw
        assert "stream closed: Redis did not confirm the subscription in time" in gateway.log()
        assert "reason=redis_unavailable" in gateway.log()
        assert "no reply from Redis" not in gateway.log(), "the pause outlasted the silence limit: not this path"

        await asyncio.to_thread(wait_until, gateway.ready, what="the gateway ready again")
        missed = await publish(gateway.url, channel, "published after the stream ended")
        async with open_stream(f"{gateway.url}/events/{channel}", last_event_id=before) as resumed:
            first = await resumed.next_event()
            live = await publish(gateway.url, channel, "live")
            second = await resumed.next_event()
    assert [(first.id, first.data), (second.id, second.data)] == [
        (missed, "published after the stream ended"),
        (live, "live"),
    ]


@pytest.mark.timeout(60)
async def test_a_client_leaving_while_its_subscription_is_unconfirmed_logs_no_error(own_redis, own_gateway, channel):
    gateway = own_gateway
    keeper_channel = f"{channel}-keeper"
    async with open_stream(f"{gateway.url}/events/{keeper_channel}") as keeper_stream:
        await keeper_stream.read_raw_until(b"retry:")
        await _fresh_upstream(gateway, keeper_channel, keeper_stream)
        own_redis.pause()
        try:
            async with open_stream(f"{gateway.url}/events/{channel}", last_event_id="0-0") as stream:
                await stream.read_raw_until(b"retry:")
            await asyncio.to_thread(wait_until, lambda: "reason=client_left" in gateway.log(), what="the stream closed")
        finally:
            own_redis.resume()
    assert "Traceback" not in gateway.log()


class _TickFails(Subscriber):
    def tick(self, now: float, wall: float) -> None:
        raise RuntimeError("this stream's tick fails")


async def test_one_stream_whose_tick_raises_does_not_stop_the_heartbeats_of_the_others(redis_server, caplog):
    broker = SingleNodeBroker(Settings(redis_url=redis_server.url, key_prefix=f"h{uuid.uuid4().hex[:8]}:"))
    hub = Hub(broker, tick=0.02)
    failing = _TickFails(["failing"], max_events=10, max_bytes=10**6)
    healthy = Subscriber(["healthy"], max_events=10, max_bytes=10**6, heartbeat=0.01)
    healthy.start_at({"healthy": (0, 0)})
    healthy.go_live()
    await hub.start()
    try:
        hub.open(failing)  # first in, so the loop meets it before the healthy one
        hub.open(healthy)
        beats = []
        async with asyncio.timeout(10):  # three heartbeats, each taken as a writer would, so the next is due
            while len(beats) < 3:
                if frames := healthy.take():
                    beats.append(frames)
                await asyncio.sleep(0.01)
        assert set(beats) == {HEARTBEAT}
        failed = [record for record in caplog.records if record.getMessage() == "tick failed for a stream of failing"]
        assert len(failed) >= 3 and all(record.exc_info for record in failed)
        assert hub._ticker is not None and not hub._ticker.done()
    finally:
        await hub.stop()
        await broker.close()
