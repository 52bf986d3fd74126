"""The gateway on a real Redis Cluster: streams on every primary, a resume on another gateway, a slot migrated
while its channel streams, and the start refused where the cluster setting and the Redis disagree."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import uuid
from collections.abc import Iterator

import httpx
import pytest

from gateway.cursor import parse_stream_id
from tests.brokers.test_contract import spanning_channels
from tests.clusters import (
    RedisClusterProcesses,
    kill_primary,
    manual_failover,
    migrate_slot,
    pause_past_the_node_timeout,
    replica_of,
)
from tests.servers import GatewayProcess, RedisProcess, free_port
from tests.streams import open_stream, publish
from tests.test_metrics import _value


@pytest.mark.parametrize("kind", ["redis_cluster", "valkey_cluster"])
async def test_streams_on_every_primary_and_a_resume_through_another_gateway(request, kind, gateways_on):
    cluster: RedisClusterProcesses = request.getfixturevalue(kind)
    channels = spanning_channels(cluster, "g-" + uuid.uuid4().hex[:8])
    first, second = (GatewayProcess(cluster.url).start() for _ in range(2))
    gateways_on.extend([first, second])
    assert "redis cluster, sharded pub/sub" in first.log()
    ids = {}
    for channel in channels:
        async with open_stream(f"{first.url}/events/{channel}") as stream:
            await stream.read_raw_until(b"retry:")
            ids[channel] = [await publish(second.url, channel, f"{channel} {n}") for n in range(3)]
            assert [(e.id, e.data) for e in await stream.take(3)] == [
                (event_id, f"{channel} {n}") for n, event_id in enumerate(ids[channel])
            ]
        # The client's gateway is gone; another one resumes it exactly from the buffer on the channel's node.
        async with open_stream(f"{second.url}/events/{channel}", last_event_id=ids[channel][0]) as resumed:
            assert [e.id for e in await resumed.take(2)] == ids[channel][1:]
    assert httpx.get(f"{first.url}/readyz").status_code == 200


@pytest.fixture
def own_cluster() -> Iterator[RedisClusterProcesses]:
    processes = RedisClusterProcesses("redis").start()
    yield processes
    processes.stop()


@pytest.mark.timeout(90)
async def test_a_slot_migrated_while_its_channel_streams_loses_and_repeats_nothing(own_cluster, gateways_on):
    channel = "moving-" + uuid.uuid4().hex[:8]
    gateway = GatewayProcess(own_cluster.url).start()
    gateways_on.append(gateway)
    key = f"sse:{{{channel}}}"
    acknowledged: list[str] = []
    moved = asyncio.Event()

    async def publish_until_moved_and_after() -> None:
        async with httpx.AsyncClient(timeout=10) as client:
            n = 0
            while not moved.is_set() or n < len(acknowledged) + 50 and len(acknowledged) < 400:
                response = await client.post(f"{gateway.url}/publish/{channel}", content=f"{n}")
                if response.status_code == 201:
                    acknowledged.append(response.json()["id"])
                n += 1
                if moved.is_set() and len(acknowledged) >= 300:
                    return

    async with open_stream(f"{gateway.url}/events/{channel}") as stream:
        await stream.read_raw_until(b"retry:")
        publisher = asyncio.create_task(publish_until_moved_and_after())
        while len(acknowledged) < 50:
            await asyncio.sleep(0.01)  # polling the publisher's progress
        target = next(node for node in own_cluster.primaries() if node.port != own_cluster.owner_of(key).port)
        await asyncio.to_thread(migrate_slot, own_cluster, key, target)
        moved.set()
        await publisher
        received = [event.id for event in await stream.take(len(acknowledged), timeout=30)]
    assert own_cluster.owner_of(key).port == target.port
    assert received == acknowledged, "every acknowledged event once, in order"
    metrics = httpx.get(f"{gateway.url}/metrics").text
    assert _value(metrics, "sse_cluster_resubscriptions_total") >= 1
    assert httpx.get(f"{gateway.url}/readyz").status_code == 200


def _serve(*args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "gateway", "serve", "--port", "0", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=30)


def _the_error(result: subprocess.CompletedProcess[str]) -> str:
    errors = [line for line in result.stderr.splitlines() if " ERROR " in line]
    assert result.returncode == 3 and len(errors) == 1, result.stderr
    assert "Traceback" not in result.stderr
    return errors[0]


def test_cluster_on_against_a_single_redis_refuses_to_start(redis_server: RedisProcess):
    error = _the_error(_serve("--redis-url", redis_server.url, "--redis-cluster", "on"))
    assert "redis_cluster is on, but the Redis at 127.0.0.1:" in error and "is not in cluster mode" in error


def test_cluster_off_against_a_cluster_node_refuses_to_start(redis_cluster: RedisClusterProcesses):
    error = _the_error(_serve("--redis-url", f"redis://{redis_cluster.nodes[0].address}", "--redis-cluster", "off"))
    assert "redis_cluster is off, but the Redis at" in error and "is a cluster node" in error


@pytest.mark.parametrize("mode", ["auto", "on"])
def test_a_url_naming_no_reachable_node_is_a_clear_error_within_seconds(mode):
    dead = f"redis://127.0.0.1:{free_port()},redis://127.0.0.1:{free_port()}"
    error = _the_error(_serve("--redis-url", dead, "--redis-cluster", mode))
    assert "not starting: no Redis answers at 127.0.0.1:" in error


@pytest.mark.timeout(180)  # a manual failover may be asked up to four times (tests/clusters.py)
@pytest.mark.parametrize(
    ("kind", "fault", "publish_replicas"),
    [
        ("redis", kill_primary, 0),
        ("redis", kill_primary, 1),
        ("redis", manual_failover, 1),
        ("redis", pause_past_the_node_timeout, 1),
        # Valkey also drops the promoted replica's shard subscribers at failover; Redis 7.0 only the old primary's.
        ("valkey", kill_primary, 1),
        ("valkey", manual_failover, 1),
    ],
    ids=[
        "redis-killed",
        "redis-killed-replicas1",
        "redis-cluster-failover-replicas1",
        "redis-paused-replicas1",
        "valkey-killed-replicas1",
        "valkey-cluster-failover-replicas1",
    ],
)
async def test_a_primary_lost_under_publishing_is_followed_to_its_promoted_replica(
    kind, fault, publish_replicas, gateways_on
):
    # With PUBLISH_REPLICAS=0 the writes the dead primary had not yet replicated are lost with it: the test counts
    # them, and holds the gateway to everything else. With 1, nothing acknowledged may be lost. Two replicas per
    # primary, so that the promoted one still has a replica to wait for.
    cluster = RedisClusterProcesses(kind, replicas=2).start()
    channel = "failover-" + uuid.uuid4().hex[:8]
    key = f"sse:{{{channel}}}"
    # No length limit on the buffer: a slow failover lets the publisher write more than the default 1000 entries, and
    # the trimmed ones would look lost.
    env = {
        "SSE_GATEWAY_PUBLISH_REPLICAS": str(publish_replicas),
        "SSE_GATEWAY_PUBLISH_REPLICAS_TIMEOUT": "2",
        "SSE_GATEWAY_BUFFER_MAXLEN": "0",
    }
    try:
        gateway = GatewayProcess(cluster.url, env=env).start()
        gateways_on.append(gateway)
        acknowledged: list[str] = []
        faulted = asyncio.Event()
        after_fault = 0

        async def publish_through_the_fault() -> None:
            nonlocal after_fault
            async with httpx.AsyncClient(timeout=15) as client:
                n = 0
                while after_fault < 50:
                    response = await client.post(f"{gateway.url}/publish/{channel}", content=f"{n}")
                    if response.status_code == 201:
                        acknowledged.append(response.json()["id"])
                        after_fault += faulted.is_set()
                    else:
                        assert response.status_code == 503, response.text
                    n += 1

        async with open_stream(f"{gateway.url}/events/{channel}") as stream:
            await stream.read_raw_until(b"retry:")
            publisher = asyncio.create_task(publish_through_the_fault())
            while len(acknowledged) < 50:
                await asyncio.sleep(0.01)  # polling the publisher's progress
            primary = cluster.owner_of(key)
            await asyncio.to_thread(fault, cluster, primary)
            # CLUSTER FAILOVER returns before the replica has taken over: count publishes from the new owner on.
            await asyncio.to_thread(cluster.wait_for_new_owner, key, primary)
            faulted.set()
            await asyncio.wait_for(publisher, 60)
            promoted = cluster.owner_of(key)
            buffered = [entry_id.decode() for entry_id, _ in promoted.client().xrange(f"{key}:buffer")]
            survived = [event_id for event_id in acknowledged if event_id in set(buffered)]
            received: list[str] = []
            while not set(survived) <= set(received):
                received.append((await stream.next_event(timeout=30)).id)
        lost = len(acknowledged) - len(survived)
        # Besides the acknowledged ones, a client may get an event whose publish answered 503 (it reached the buffer
        # and a replica, but not in time for the answer): a 503 means "not known to be durable".
        unacknowledged = len(set(received) - set(acknowledged))
        print(
            f"\n{kind} {fault.__name__}, PUBLISH_REPLICAS={publish_replicas}: {len(acknowledged)} acknowledged, "
            f"{len(received)} delivered ({unacknowledged} of them answered 503), {lost} lost, "
            f"{len(received) - len(set(received))} duplicated"
        )
        assert promoted.port != primary.port
        assert len(set(received)) == len(received), "no event twice"
        assert [parse_stream_id(i) for i in received] == sorted(parse_stream_id(i) for i in received), "in order"
        assert [i for i in received if i in set(acknowledged)] == survived, "every surviving acknowledged event"
        if publish_replicas:
            assert lost == 0, "a publish acknowledged by a replica survives the primary"
            assert set(received) <= set(buffered), "no client got an event the failover took out of the buffer"
    finally:
        cluster.stop()


@pytest.mark.timeout(90)
async def test_a_slot_with_no_reachable_owner_refuses_its_publishes_and_leaves_other_channels_alone(gateways_on):
    # Without full coverage required, the rest of the cluster keeps serving while one shard is gone entirely.
    cluster = RedisClusterProcesses("redis", extra=("--cluster-require-full-coverage", "no")).start()
    try:
        lost, kept = spanning_channels(cluster, "down-" + uuid.uuid4().hex[:8])[:2]
        gateway = GatewayProcess(cluster.url).start()
        gateways_on.append(gateway)
        async with (
            open_stream(f"{gateway.url}/events/{lost}") as on_lost,
            open_stream(f"{gateway.url}/events/{kept}") as on_kept,
        ):
            await on_lost.read_raw_until(b"retry:")
            await on_kept.read_raw_until(b"retry:")
            shard = cluster.owner_of(f"sse:{{{lost}}}")
            # A channel of the same shard that nobody has asked for yet.
            fresh = next(
                name
                for name in (f"{lost}-{n}" for n in range(100))
                if cluster.owner_of(f"sse:{{{name}}}").port == shard.port
            )
            replica = replica_of(cluster, shard)
            replica.kill()
            shard.kill()
            async with httpx.AsyncClient(timeout=30) as client:
                refused = await client.post(f"{gateway.url}/publish/{lost}", content="nowhere to go")
                assert refused.status_code == 503 and refused.json()["error"] == "redis_unavailable", refused.text
                event_id = await publish(gateway.url, kept, "still here")
                assert (await on_kept.next_event()).id == event_id
                # This process needs a slot that nobody serves: not ready.
                ready = await client.get(f"{gateway.url}/readyz")
                assert ready.status_code == 503, ready.text
                # A new stream of a channel on the lost shard ends at once, so that EventSource tries again later
                # (a 5xx would stop it for good), rather than staying open with no events ever coming.
                opened = await client.get(f"{gateway.url}/events/{fresh}")
                assert opened.status_code == 200 and "id:" not in opened.text, opened.text
                assert "stream closed" in gateway.log()
                event_id = await publish(gateway.url, kept, "and still")
                assert (await on_kept.next_event()).id == event_id
            assert not on_kept.finished
    finally:
        cluster.stop()
