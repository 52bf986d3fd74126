"""Replay buffers of quiet channels expire, so Redis memory stays bounded however many channels come and go."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator

import pytest

from gateway.brokers.single import PUBLISH_SCRIPT, SingleNodeBroker
from gateway.config import Settings
from tests.servers import GatewayProcess, RedisProcess, wait_until
from tests.streams import open_stream, publish

AGE_LIMIT = 1.0  # seconds; a buffer then lives this long plus the script's one second of margin after its last publish


@pytest.fixture
def private_redis() -> Iterator[RedisProcess]:
    server = RedisProcess().start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def short_lived_gateway(redis_server) -> Iterator[GatewayProcess]:
    process = GatewayProcess(redis_server.url, env={"SSE_GATEWAY_BUFFER_MAX_AGE": str(AGE_LIMIT)}).start()
    yield process
    process.stop()


async def _publish_with(url: str, settings: Settings, channels: list[str]) -> None:
    broker = SingleNodeBroker(settings.replace(redis_url=url))
    try:
        for channel in channels:
            await broker.publish(channel, "once")
    finally:
        await broker.close()


@pytest.mark.timeout(60)
async def test_a_thousand_quiet_channels_leave_no_key_behind(private_redis):
    channels = [f"user-{i}" for i in range(1000)]
    await _publish_with(private_redis.url, Settings(buffer_max_age=AGE_LIMIT), channels)
    redis = private_redis.client()
    assert redis.dbsize() == 1000
    ttls = [redis.pttl(f"sse:{{{channel}}}:buffer") for channel in channels[::100]]
    assert all(0 < ttl <= (AGE_LIMIT + 1) * 1000 for ttl in ttls), ttls
    # Nothing reads the keys meanwhile: Redis's own expiry cycle has to reclaim them.
    await asyncio.to_thread(wait_until, lambda: redis.dbsize() == 0, what="every buffer expired", timeout=30)


async def test_without_an_age_limit_the_idle_setting_bounds_a_buffer(private_redis):
    await _publish_with(private_redis.url, Settings(buffer_max_age=0, buffer_idle_ttl=30), ["idle"])
    assert 0 < private_redis.client().pttl("sse:{idle}:buffer") <= 30_000


async def test_an_idle_setting_of_zero_keeps_a_buffer_without_an_age_limit_for_ever(private_redis):
    await _publish_with(private_redis.url, Settings(buffer_max_age=0, buffer_idle_ttl=0), ["kept"])
    assert private_redis.client().pttl("sse:{kept}:buffer") == -1


def test_the_four_argument_script_call_of_other_publishers_gets_an_expiry_too(private_redis):
    redis = private_redis.client()
    keys = ["sse:{plain}:buffer", "sse:{plain}"]
    redis.eval(PUBLISH_SCRIPT, 2, *keys, 1000, 60_000, "", "with an age limit")
    assert 60_000 < redis.pttl(keys[0]) <= 61_000
    keys = ["sse:{ageless}:buffer", "sse:{ageless}"]
    redis.eval(PUBLISH_SCRIPT, 2, *keys, 1000, 0, "", "no age limit")
    assert 86_000_000 < redis.pttl(keys[0]) <= 86_400_000


async def test_a_buffer_written_without_an_expiry_is_given_one_by_its_next_publish(private_redis):
    redis = private_redis.client()
    redis.xadd("sse:{legacy}:buffer", {"p": "", "e": "", "d": "from an older gateway"})
    assert redis.pttl("sse:{legacy}:buffer") == -1
    await _publish_with(private_redis.url, Settings(buffer_max_age=AGE_LIMIT), ["legacy"])
    assert 0 < redis.pttl("sse:{legacy}:buffer") <= (AGE_LIMIT + 1) * 1000
    assert redis.xlen("sse:{legacy}:buffer") == 2


@pytest.mark.timeout(60)
async def test_a_channel_that_keeps_publishing_keeps_its_buffer(short_lived_gateway, redis_server, channel):
    key = f"sse:{{{channel}}}:buffer"
    ids = []
    # Publishing every 0.3 s for three times the buffer's lifetime: each publish pushes the expiry back.
    for index in range(20):
        ids.append(await publish(short_lived_gateway.url, channel, f"tick {index}"))
        assert redis_server.client().exists(key) == 1, f"the buffer expired after publish {index}"
        await asyncio.sleep(0.3)  # pacing the publisher, not waiting for anything
    async with open_stream(f"{short_lived_gateway.url}/events/{channel}", last_event_id=ids[-2]) as stream:
        resumed = await stream.next_event()
    assert (resumed.id, resumed.data) == (ids[-1], "tick 19")


@pytest.mark.timeout(60)
async def test_a_resume_after_the_buffer_expired_gets_one_gap_then_live_events(
    short_lived_gateway, redis_server, channel
):
    first = await publish(short_lived_gateway.url, channel, "one")
    second = await publish(short_lived_gateway.url, channel, "two")
    url = f"{short_lived_gateway.url}/events/{channel}"
    async with open_stream(url, last_event_id=first) as stream:  # inside the age limit: exact
        resumed = await stream.next_event()
        assert (resumed.id, resumed.data, resumed.event) == (second, "two", "message")

    key = f"sse:{{{channel}}}:buffer"
    await asyncio.to_thread(wait_until, lambda: not redis_server.client().exists(key), what="the buffer to expire")
    async with open_stream(url, last_event_id=second) as stream:
        await stream.read_raw_until(b"retry:")
        third = await publish(short_lived_gateway.url, channel, "three")
        gap, live = await stream.take(2)
        assert gap.event == "gap"
        assert json.loads(gap.data) == {"channel": channel, "requested": second, "first_available": "0-0"}
        assert (live.id, live.data) == (third, "three")


@pytest.mark.timeout(60)
async def test_a_fresh_client_on_an_expired_channel_starts_from_nothing(short_lived_gateway, redis_server, channel):
    await publish(short_lived_gateway.url, channel, "long ago")
    key = f"sse:{{{channel}}}:buffer"
    await asyncio.to_thread(wait_until, lambda: not redis_server.client().exists(key), what="the buffer to expire")
    async with open_stream(f"{short_lived_gateway.url}/events/{channel}") as stream:
        opening = await stream.read_raw_until(b"retry:")
        event_id = await publish(short_lived_gateway.url, channel, "now")
        event = await stream.next_event()
    assert b"id: 0-0" in opening
    assert (event.event, event.id, event.data) == ("message", event_id, "now")
