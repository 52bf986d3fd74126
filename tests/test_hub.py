"""The hub against real processes: a subscription that Redis does not confirm in time ends the stream cleanly."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from tests.servers import GatewayProcess, RedisProcess, wait_until
from tests.streams import open_stream, publish


@pytest.fixture
def own_redis() -> Iterator[RedisProcess]:
    """A Redis this test alone uses, so it may pause it."""
    server = RedisProcess().start()
    yield server
    server.stop()


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
