"""Concurrent publishes share round trips (gateway.brokers.pipeline), each with its own answer, in order."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator

import pytest

from gateway.brokers import broker_for
from gateway.brokers.pipeline import Coalescer
from gateway.config import Settings
from gateway.cursor import parse_stream_id
from gateway.errors import RedisUnavailable
from tests.servers import RedisProcess


async def queued(coalescer: Coalescer[int], count: int) -> None:
    async with asyncio.timeout(5):
        while coalescer.waiting < count:
            await asyncio.sleep(0)  # polling a condition, with a bound


async def test_calls_made_while_one_is_in_flight_go_together_in_order():
    batches: list[list[int]] = []
    release = asyncio.Event()

    async def one(item: int) -> int:
        await release.wait()  # the first call stays in flight while the others arrive
        return item * 10

    async def many(items: list[int]) -> list[object]:
        batches.append(items)
        return [ValueError(f"bad {n}") if n == 3 else n * 10 for n in items]

    coalescer: Coalescer[int] = Coalescer(one, many)
    calls = [asyncio.ensure_future(coalescer.call(n)) for n in range(6)]
    await queued(coalescer, 5)  # the first is in flight, the others wait for it
    release.set()
    results = await asyncio.gather(*calls, return_exceptions=True)
    assert batches == [[1, 2, 3, 4, 5]], "the first went alone, the rest in one round trip, in order"
    assert results[:3] == [0, 10, 20] and results[4:] == [40, 50]
    assert isinstance(results[3], ValueError) and str(results[3]) == "bad 3", "its own error, to its caller only"


async def test_a_round_trip_that_fails_fails_each_of_its_callers_and_the_next_ones_still_go():
    release = asyncio.Event()
    rounds = 0

    async def one(item: int) -> int:
        await release.wait()
        return item

    async def many(items: list[int]) -> list[object]:
        nonlocal rounds
        rounds += 1
        if rounds == 1:
            raise ConnectionError("the connection broke")
        return list(items)

    coalescer: Coalescer[int] = Coalescer(one, many)
    first = [asyncio.ensure_future(coalescer.call(n)) for n in range(3)]
    await queued(coalescer, 2)
    release.set()
    results = await asyncio.gather(*first, return_exceptions=True)
    assert results[0] == 0 and all(isinstance(r, ConnectionError) for r in results[1:])
    assert await coalescer.call(7) == 7, "the coalescer is free again"


@pytest.fixture(scope="module")
def own_redis() -> Iterator[RedisProcess]:
    """A Redis of this module's own: its client list shows only these tests' connections."""
    server = RedisProcess().start()
    yield server
    server.stop()


@pytest.fixture
def channels() -> list[str]:
    base = "pl-" + uuid.uuid4().hex[:8]
    return [f"{base}-{n}" for n in range(4)]


async def test_concurrent_publishes_are_stored_in_call_order_each_with_its_own_id(own_redis, channels):
    broker = broker_for(Settings(redis_url=own_redis.url, redis_cluster="off"))
    try:
        calls = [(channels[n % 4], f"event {n}") for n in range(400)]
        ids = await asyncio.gather(*(broker.publish(channel, data) for channel, data in calls))
        raw = own_redis.client()
        for channel in channels:
            stored = [(e.decode(), f[b"d"].decode()) for e, f in raw.xrange(f"sse:{{{channel}}}:buffer")]
            expected = [(i, data) for i, (c, data) in zip(ids, calls, strict=True) if c == channel]
            assert stored == expected, "stored in the order of the calls, under the ids their callers got"
            assert [parse_stream_id(i) for i, _ in stored] == sorted(parse_stream_id(i) for i, _ in stored)
        # They shared connections: far fewer than one per concurrent publish.
        theirs = [c for c in raw.client_list() if c.get("cmd") != "client|list"]
        assert len(theirs) <= 4, theirs
    finally:
        await broker.close()


@pytest.mark.parametrize("merged", [False, True], ids=["one-script-call-each", "merged-by-channel"])
async def test_one_publish_failing_in_redis_fails_alone_and_the_others_of_its_round_trip_are_stored(
    own_redis, channels, merged
):
    raw = own_redis.client()
    broken = channels[0]
    raw.set(f"sse:{{{broken}}}:buffer", "not a stream")  # its XADD fails with WRONGTYPE inside the script
    broker = broker_for(Settings(redis_url=own_redis.url, redis_cluster="off", publish_merge=merged))
    try:
        calls = [(channels[n % 2], f"event {n}") for n in range(40)]
        results = await asyncio.gather(*(broker.publish(c, d) for c, d in calls), return_exceptions=True)
        for (channel, _), result in zip(calls, results, strict=True):
            if channel == broken:
                assert isinstance(result, RedisUnavailable) and "WRONGTYPE" in result.detail, result
            else:
                assert isinstance(result, str), result
        assert raw.xlen(f"sse:{{{channels[1]}}}:buffer") == 20
    finally:
        await broker.close()
