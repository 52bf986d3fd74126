"""Raw channels on a real Redis Cluster: the bare subscription is a classic SUBSCRIBE on the connection of the
channel's primary, hears a bare PUBLISH sent to any node (classic Pub/Sub is broadcast to every node), and goes with
the channel when its slot moves or its primary dies, so that each bare message reaches the stream once.

``PUBSUB NUMSUB`` answers for the node it is asked on only, so asking every node shows where the subscription is.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator

import pytest

from gateway.brokers.bare import BareMessages
from gateway.brokers.naming import Naming
from gateway.brokers.upstream import Upstream
from tests.brokers.test_bare import SENTINEL, until_sentinel
from tests.clusters import ClusterNode, RedisClusterProcesses, kill_primary, migrate_slot
from tests.servers import GatewayProcess, wait_until
from tests.streams import open_stream, publish


def numsub(node: ClusterNode, name: str) -> int:
    client = node.client()
    try:
        return client.pubsub_numsub(name)[0][1]
    finally:
        client.close()


def subscribed_on(cluster: RedisClusterProcesses, name: str) -> dict[int, int]:
    """Port -> subscriptions to the classic channel ``name``, for every node that has any."""
    return {node.port: count for node in cluster.running() if (count := numsub(node, name))}


async def held_by(cluster: RedisClusterProcesses, name: str, node: ClusterNode) -> None:
    """Wait until the one subscription to ``name`` in the whole cluster is on ``node``."""
    await asyncio.to_thread(
        wait_until,
        lambda: subscribed_on(cluster, name) == {node.port: 1},
        what=f"{name} subscribed on {node.address} alone (when the wait began: {subscribed_on(cluster, name)})",
        timeout=15,
    )


def bare_publish(node: ClusterNode, name: str, payload: str) -> None:
    client = node.client()
    try:
        client.publish(name, payload)
    finally:
        client.close()


@pytest.mark.parametrize("kind", ["redis_cluster", "valkey_cluster"])
async def test_a_bare_publish_sent_to_any_node_reaches_the_stream_of_a_raw_channel_once(request, kind, gateways_on):
    cluster: RedisClusterProcesses = request.getfixturevalue(kind)
    gateway = GatewayProcess(cluster.url, "--raw-channels", "r-*").start()
    gateways_on.append(gateway)
    raw = "r-" + uuid.uuid4().hex[:10]
    owner = cluster.owner_of(f"sse:{{{raw}}}")
    elsewhere = [node for node in cluster.running() if node.port != owner.port]
    async with open_stream(f"{gateway.url}/events/{raw}") as stream:
        await stream.read_raw_until(b"retry:")
        await held_by(cluster, raw, owner)  # on the connection of its own channel's primary, and nowhere else
        for node in [owner, *elsewhere]:  # primaries and replicas alike pass a bare PUBLISH on to every node
            bare_publish(node, raw, f"via {node.port}")
            event = await stream.next_event()
            assert (event.data, event.id) == (f"via {node.port}", "0-0")
        own = await publish(gateway.url, raw, "own")
        sentinel = await publish(gateway.url, raw, SENTINEL)
        received = await until_sentinel(stream)
    assert [(e.data, e.id) for e in received] == [("own", own), (SENTINEL, sentinel)], "the own ones once, with ids"
    await asyncio.to_thread(
        wait_until, lambda: not subscribed_on(cluster, raw), what="the bare subscription dropped", timeout=15
    )


@pytest.fixture
def own_cluster() -> Iterator[RedisClusterProcesses]:
    processes = RedisClusterProcesses("redis").start()
    yield processes
    processes.stop()


def on_same_primary(cluster: RedisClusterProcesses, raw: str) -> str:
    """Another raw channel whose slot is another one on the same primary as ``raw``'s."""
    owner, slot = cluster.owner_of(f"sse:{{{raw}}}").port, cluster.slot_of(f"sse:{{{raw}}}")
    for n in range(500):
        name = f"{raw}-{n}"
        if cluster.owner_of(f"sse:{{{name}}}").port == owner and cluster.slot_of(f"sse:{{{name}}}") != slot:
            return name
    raise AssertionError(f"no other slot of {owner} in 500 names")


@pytest.mark.timeout(90)
async def test_a_raw_channel_whose_slot_moves_takes_its_bare_subscription_along(own_cluster, gateways_on):
    gateway = GatewayProcess(own_cluster.url, "--raw-channels", "r-*").start()
    gateways_on.append(gateway)
    moving = "r-" + uuid.uuid4().hex[:10]
    staying = on_same_primary(own_cluster, moving)  # keeps the old primary's connection open after the move
    source = own_cluster.owner_of(f"sse:{{{moving}}}")
    target = next(node for node in own_cluster.primaries() if node.port != source.port)
    async with (
        open_stream(f"{gateway.url}/events/{moving}") as stream,
        open_stream(f"{gateway.url}/events/{staying}") as other,
    ):
        await stream.read_raw_until(b"retry:")
        await other.read_raw_until(b"retry:")
        await held_by(own_cluster, moving, source)
        await held_by(own_cluster, staying, source)
        before = await publish(gateway.url, moving, "before the move")
        assert (await stream.next_event()).id == before

        await asyncio.to_thread(migrate_slot, own_cluster, f"sse:{{{moving}}}", target)
        # Gone from the old primary, whose connection stays up for the other channel: a node drops only the shard
        # subscriptions of a slot that leaves it, so the gateway must drop the bare one itself.
        await held_by(own_cluster, moving, target)
        await held_by(own_cluster, staying, source)

        # Sent to the old primary, it reaches the new one over the cluster bus: once, not once per node.
        bare_publish(source, moving, "bare after the move")
        assert (await stream.next_event()).data == "bare after the move"
        after = await publish(gateway.url, moving, "after the move")
        sentinel = await publish(gateway.url, moving, SENTINEL)
        received = await until_sentinel(stream)
        assert [(e.data, e.id) for e in received] == [("after the move", after), (SENTINEL, sentinel)]
        bare_publish(source, staying, "the other channel")
        assert (await other.next_event()).data == "the other channel"


@pytest.mark.timeout(90)
async def test_a_raw_channels_bare_subscription_follows_its_killed_primary_to_the_promoted_replica(
    own_cluster, gateways_on
):
    gateway = GatewayProcess(own_cluster.url, "--raw-channels", "r-*").start()
    gateways_on.append(gateway)
    raw = "r-" + uuid.uuid4().hex[:10]
    key = f"sse:{{{raw}}}"
    async with open_stream(f"{gateway.url}/events/{raw}") as stream:
        await stream.read_raw_until(b"retry:")
        primary = own_cluster.owner_of(key)
        await held_by(own_cluster, raw, primary)
        await asyncio.to_thread(kill_primary, own_cluster, primary)
        promoted = await asyncio.to_thread(own_cluster.wait_for_new_owner, key, primary)
        await held_by(own_cluster, raw, promoted)
        other = next(node for node in own_cluster.running() if node.port != promoted.port)
        bare_publish(other, raw, "after the failover")
        event = await stream.next_event(timeout=15)
        assert (event.data, event.id) == ("after the failover", "0-0")
        assert not stream.finished


def shard_subscribers(node: ClusterNode, name: str) -> int:
    client = node.client()
    try:
        return int(client.execute_command("PUBSUB", "SHARDNUMSUB", name)[1])
    finally:
        client.close()


@pytest.mark.timeout(90)
async def test_a_raw_channel_left_after_its_slot_moved_away_leaves_no_bare_subscription_behind(own_cluster):
    # One upstream alone, with no topology check to release the channel: only the node's own SUNSUBSCRIBE (its slot
    # left) and then the delayed unsubscribe once the last subscriber has gone.
    raw = "r-" + uuid.uuid4().hex[:10]
    own = f"sse:{{{raw}}}"
    source = own_cluster.owner_of(own)
    target = next(node for node in own_cluster.primaries() if node.port != source.port)
    naming = Naming("sse:", ("r-*",))
    upstream = Upstream(
        f"redis://{source.address}", naming, lambda event: None, lambda channel, until: asyncio.sleep(0),
        sharded=True, bare=BareMessages(1 << 20),
    )  # fmt: skip
    await upstream.start()
    try:
        await asyncio.wait_for(upstream.subscribe(raw).wait(), 10)
        await held_by(own_cluster, raw, source)
        await asyncio.to_thread(migrate_slot, own_cluster, own, target)
        await asyncio.to_thread(wait_until, lambda: shard_subscribers(source, own) == 0, what="the node's SUNSUBSCRIBE")
        upstream.unsubscribe(raw)
        await asyncio.to_thread(
            wait_until, lambda: subscribed_on(own_cluster, raw) == {}, what=f"{raw} unsubscribed everywhere", timeout=10
        )
    finally:
        await upstream.stop()
