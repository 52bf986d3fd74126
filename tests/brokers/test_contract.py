"""The Broker protocol, the same tests on every implementation: one Redis, and a real cluster of each server kind.

Channels of the cluster cases span all three primaries, so every test crosses nodes.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import pytest
import redis

from gateway.brokers import broker_for
from gateway.brokers.protocol import Broker
from gateway.config import Settings
from gateway.cursor import ZERO, StreamId, parse_stream_id
from gateway.errors import BadRequest, Unauthorized
from gateway.events import Event
from gateway.security.tickets import Tickets
from tests.clusters import RedisClusterProcesses
from tests.servers import RedisProcess


@dataclass
class Target:
    """What a test needs of the Redis behind a broker: its URL, a raw client for a key, and channels to use."""

    url: str
    raw_for: Callable[[str], redis.Redis]
    channels: list[str]
    cluster: RedisClusterProcesses | None = None


@dataclass
class Recorder:
    events: list[Event] = field(default_factory=list)
    catch_ups: list[str] = field(default_factory=list)
    catch_up_bounds: list[StreamId | None] = field(default_factory=list)

    def on_event(self, event: Event) -> None:
        self.events.append(event)

    async def on_catch_up(self, channel: str, until: StreamId | None) -> None:
        self.catch_ups.append(channel)
        self.catch_up_bounds.append(until)

    async def wait_for(self, condition: Callable[[], bool], what: str, timeout: float = 10) -> None:
        async with asyncio.timeout(timeout):
            while not condition():
                await asyncio.sleep(0.01)  # polling a condition, with a bound; not a wait standing in for one

    def data(self, channel: str) -> list[str]:
        return [event.data for event in self.events if event.channel == channel]


def spanning_channels(cluster: RedisClusterProcesses, base: str) -> list[str]:
    """Three channel names whose slots are on three different primaries."""
    chosen: dict[int, str] = {}
    for i in range(200):
        name = f"{base}-{i}"
        owner = cluster.owner_of(f"sse:{{{name}}}").port
        chosen.setdefault(owner, name)
        if len(chosen) == 3:
            return list(chosen.values())
    raise AssertionError("no three channels on three primaries in 200 names")


@pytest.fixture(params=["single", "redis_cluster", "valkey_cluster"])
def target(request: pytest.FixtureRequest) -> Target:
    base = "c-" + uuid.uuid4().hex[:8]
    if request.param == "single":
        server: RedisProcess = request.getfixturevalue("redis_server")
        return Target(server.url, lambda key: server.client(), [f"{base}-{i}" for i in range(3)])
    cluster: RedisClusterProcesses = request.getfixturevalue(request.param)
    return Target(
        cluster.url, lambda key: cluster.owner_of(key).client(), spanning_channels(cluster, base), cluster=cluster
    )


@pytest.fixture
async def broker(target: Target) -> AsyncIterator[Broker]:
    broker = broker_for(Settings(redis_url=target.url))
    yield broker
    await broker.close()


@pytest.fixture
async def started(broker: Broker) -> AsyncIterator[tuple[Broker, Recorder]]:
    recorder = Recorder()
    await broker.start(recorder.on_event, recorder.on_catch_up)
    yield broker, recorder


async def test_the_implementation_matches_the_redis(broker: Broker, target: Target) -> None:
    assert type(broker).__name__ == ("ClusterBroker" if target.cluster else "SingleNodeBroker")


async def test_publish_buffers_each_event_and_the_backlog_reads_them_with_their_previous_ids(
    broker: Broker, target: Target
) -> None:
    for channel in target.channels:
        assert await broker.tail(channel) == ZERO
        assert not await broker.buffered(channel)
        ids = [parse_stream_id(await broker.publish(channel, f"{channel} {n}", "tick")) for n in range(3)]
        assert await broker.tail(channel) == ids[-1]
        assert await broker.buffered(channel)
        key = f"sse:{{{channel}}}:buffer"
        assert 0 < target.raw_for(key).pttl(key) <= 86_400_000, "the buffer expires once the channel goes quiet"
        [page] = [page async for page in broker.backlog(channel, ZERO)]
        assert [(e.stream_id, e.previous, e.type, e.data) for e in page] == [
            (ids[n], ([ZERO, *ids][n]), "tick", f"{channel} {n}") for n in range(3)
        ]
        assert [e.stream_id for page in [p async for p in broker.backlog(channel, ids[0])] for e in page] == ids[1:]


async def test_a_bad_event_type_is_refused_as_bad_input_and_nothing_is_buffered(broker: Broker, target: Target) -> None:
    channel = target.channels[0]
    with pytest.raises(BadRequest):
        await broker.publish(channel, "data", "tick\nretry: 1")
    assert not await broker.buffered(channel)


async def test_subscriptions_are_confirmed_and_deliver_every_event_in_order(
    started: tuple[Broker, Recorder], target: Target
) -> None:
    broker, recorder = started
    confirmations = [broker.subscribe(channel) for channel in target.channels]
    async with asyncio.timeout(10):
        for confirmed in confirmations:
            await confirmed.wait()
    assert broker.live and await broker.ping()
    for n in range(20):
        for channel in target.channels:
            await broker.publish(channel, f"{n}")
    await recorder.wait_for(lambda: len(recorder.events) == 60, "every event")
    for channel in target.channels:
        assert recorder.data(channel) == [f"{n}" for n in range(20)]
        events = [event for event in recorder.events if event.channel == channel]
        assert [e.previous for e in events[1:]] == [e.stream_id for e in events[:-1]]
    assert recorder.catch_ups == []


async def test_an_event_buffered_but_never_published_makes_the_broker_ask_for_a_catch_up(
    started: tuple[Broker, Recorder], target: Target
) -> None:
    broker, recorder = started
    channel = target.channels[-1]
    async with asyncio.timeout(10):
        await broker.subscribe(channel).wait()
    first = await broker.publish(channel, "first")
    await recorder.wait_for(lambda: recorder.data(channel) == ["first"], "the first event")
    target.raw_for(f"sse:{{{channel}}}").xadd(f"sse:{{{channel}}}:buffer", {"p": first, "e": "", "d": "unpublished"})
    await broker.publish(channel, "last")
    await recorder.wait_for(lambda: recorder.data(channel) == ["first", "last"], "the last event")
    assert recorder.catch_ups == [channel], "asked before the event after the hole was delivered"
    assert recorder.catch_up_bounds == [recorder.events[-1].stream_id], "up to the event that showed the hole"


async def test_an_unsubscribed_channel_is_left_on_its_node(started: tuple[Broker, Recorder], target: Target) -> None:
    broker, recorder = started
    channel = target.channels[1]
    raw = target.raw_for(f"sse:{{{channel}}}")
    count = raw.pubsub_shardnumsub if target.cluster else raw.pubsub_numsub
    async with asyncio.timeout(10):
        await broker.subscribe(channel).wait()
    assert count(f"sse:{{{channel}}}")[0][1] == 1
    broker.unsubscribe(channel)
    await recorder.wait_for(lambda: count(f"sse:{{{channel}}}")[0][1] == 0, "the delayed unsubscribe")


async def test_publish_loads_the_script_again_after_the_script_cache_is_flushed(broker: Broker, target: Target) -> None:
    # A promoted replica has no scripts (the cache is not replicated): EVALSHA answers NOSCRIPT.
    first = await broker.publish(target.channels[0], "before")
    nodes = target.cluster.running() if target.cluster else None
    for client in [node.client() for node in nodes] if nodes else [target.raw_for("")]:
        client.script_flush()
    for channel in target.channels:
        assert parse_stream_id(await broker.publish(channel, "after")) > ZERO
    assert parse_stream_id(await broker.publish(target.channels[0], "again")) > parse_stream_id(first)


async def test_a_batch_is_stored_and_sent_live_in_order_per_channel_with_a_bad_event_refused_alone(
    started: tuple[Broker, Recorder], target: Target
) -> None:
    broker, recorder = started
    async with asyncio.timeout(10):
        for channel in target.channels:
            await broker.subscribe(channel).wait()
    events = [(target.channels[n % 3], f"batch {n}", "tick" if n % 2 else None) for n in range(1200)]
    events[7] = (target.channels[1], "refused", "bad\ntype")
    outcomes = await broker.publish_many(events)
    assert isinstance(outcomes[7], BadRequest) and outcomes[7].code == "bad_event_type"
    assert all(isinstance(o, str) for n, o in enumerate(outcomes) if n != 7), outcomes[:10]
    await recorder.wait_for(lambda: len(recorder.events) == 1199, "every good event live")
    for channel in target.channels:
        expected = [(data, kind) for c, data, kind in events if c == channel and data != "refused"]
        assert [(e.data, e.type) for e in recorder.events if e.channel == channel] == expected
        stored = [e for page in [p async for p in broker.backlog(channel, ZERO)] for e in page]
        assert [(e.data, e.type) for e in stored] == expected
        ids = [
            parse_stream_id(o) for (c, d, _), o in zip(events, outcomes, strict=True) if c == channel and d != "refused"
        ]
        assert [e.stream_id for e in stored] == ids, "each event's outcome is its own id"
        assert [e.previous for e in stored[1:]] == ids[:-1], "each names the one before it, across script calls"


async def test_a_stream_ticket_is_kept_under_its_digest_for_its_lifetime_only(broker: Broker, target: Target) -> None:
    tickets = Tickets(broker, ttl=30)
    credential_expires_at = time.time() + 10
    ticket = await tickets.issue(["a", "b"], credential_expires_at)
    assert credential_expires_at - time.time() <= ticket.expires_in <= 10, "the credential's expiry, not the TTL"
    grant = await tickets.redeem(ticket.value)
    assert (grant.subscribe, grant.expires_at) == (("a", "b"), credential_expires_at)
    key = f"sse:ticket:{hashlib.sha256(ticket.value.encode()).hexdigest()}"
    raw = target.raw_for(key)
    pttl = raw.pttl(key)  # then the clock: what is left by then is at most what Redis said was left
    assert (credential_expires_at - time.time()) * 1000 - 2 <= pttl <= 10_000
    assert ticket.value.encode() not in raw.get(key), "Redis holds the ticket's digest, never the ticket"
    with pytest.raises(Unauthorized):
        await tickets.redeem(ticket.value[:-1])

    short = await Tickets(broker, ttl=0.2).issue(["a"], None)
    short_key = f"sse:ticket:{hashlib.sha256(short.value.encode()).hexdigest()}"
    async with asyncio.timeout(5):
        while target.raw_for(short_key).exists(short_key):
            await asyncio.sleep(0.02)  # polling Redis's own expiry, with a bound
    with pytest.raises(Unauthorized):
        await tickets.redeem(short.value)
