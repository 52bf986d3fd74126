"""The fault suite on a Redis Cluster, judged by the invariant checker: resuming subscribers (single- and
multi-channel) over channels on all three primaries, a continuous publisher per channel, and one primary broken
under them, or one of two gateways killed behind nginx. With SSE_GATEWAY_PUBLISH_REPLICAS=1 nothing acknowledged may
be lost, duplicated or reordered.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import pytest

from tests.brokers.test_contract import spanning_channels
from tests.clusters import (
    ClusterNode,
    RedisClusterProcesses,
    kill_primary,
    manual_failover,
    migrate_slot,
    pause_past_the_node_timeout,
)
from tests.proxies import NginxProcess
from tests.servers import GatewayProcess
from tests.workload import ClusterRig, Workload, wait_for

SUBSCRIBERS, RATE = 12, 60.0  # RATE: publishes per second, over all channels
ENV = {"SSE_GATEWAY_PUBLISH_REPLICAS": "1", "SSE_GATEWAY_PUBLISH_REPLICAS_TIMEOUT": "2"}


def migrate_its_slot(key: str) -> Callable[[RedisClusterProcesses, ClusterNode], None]:
    def migrate(cluster: RedisClusterProcesses, primary: ClusterNode) -> None:
        target = next(node for node in cluster.primaries() if node.port != primary.port)
        migrate_slot(cluster, key, target)

    migrate.__name__ = "slot_migrated"
    return migrate


@pytest.fixture(params=["redis", "valkey"])
async def rig(request: pytest.FixtureRequest) -> AsyncIterator[ClusterRig]:
    rig = await ClusterRig(request.param).start()
    yield rig
    await rig.stop()


@pytest.mark.timeout(150)
@pytest.mark.parametrize("fault", ["primary_killed", "cluster_failover", "primary_paused", "slot_migrated"])
async def test_a_primary_broken_under_live_traffic_loses_nothing_acknowledged(rig: ClusterRig, fault: str):
    cluster = rig.redis
    channels = spanning_channels(cluster, "cf")
    key = f"sse:{{{channels[0]}}}"
    action = {
        "primary_killed": kill_primary,
        "cluster_failover": manual_failover,
        "primary_paused": pause_past_the_node_timeout,
        "slot_migrated": migrate_its_slot(key),
    }[fault]
    await rig.configure(ENV, ())
    workload = Workload(rig, channels, subscribers=SUBSCRIBERS, rate=RATE)
    await workload.start()
    try:
        await workload.run_for(1.5)
        primary = cluster.owner_of(key)
        await asyncio.to_thread(action, cluster, primary)
        await asyncio.to_thread(cluster.wait_for_new_owner, key, primary)  # the fault did move the channel's slot
        # Publishing to the broken channel works again, on its new primary: only now are there events that the
        # subscribers can get solely if the gateway followed the slot.
        broken = workload.checker.acked.setdefault(channels[0], {})
        acked_then = len(broken)
        assert await wait_for(lambda: len(broken) >= acked_then + 20, 30), "publishes on the new primary"
        await workload.run_for(1.0)
    except BaseException:
        await workload.finish(settle=0)
        raise
    await _judge(workload, f"{cluster.kind} {fault}")


@pytest.mark.timeout(150)
async def test_a_gateway_killed_behind_nginx_loses_nothing_acknowledged(request: pytest.FixtureRequest):
    rig = await ClusterRig("redis").start()
    request.addfinalizer(rig.stop_now)
    channels = spanning_channels(rig.redis, "gk")
    first = await rig.configure(ENV, ())
    second = await asyncio.to_thread(GatewayProcess(rig.redis.url, env=ENV).start)
    request.addfinalizer(second.stop)
    nginx = await asyncio.to_thread(NginxProcess([first.port, second.port]).start)
    request.addfinalizer(nginx.stop)
    # Subscribers and publishers all go through nginx, which spreads them over both gateways.
    workload = Workload(rig, channels, subscribers=SUBSCRIBERS, rate=RATE, url=nginx.url)
    await workload.start()
    try:
        await workload.run_for(1.5)
        await asyncio.to_thread(first.kill)
        # Every channel gets new events after the kill, through the gateway left.
        acked_then = {channel: len(workload.checker.acked.get(channel, {})) for channel in channels}

        def all_published_again() -> bool:
            return all(len(workload.checker.acked.get(c, {})) >= acked_then[c] + 20 for c in channels)

        assert await wait_for(all_published_again, 30), "publishes through nginx after the kill"
        await workload.run_for(1.0)
    except BaseException:
        await workload.finish(settle=0)
        raise
    await _judge(workload, "gateway killed behind nginx")
    moved = [s for s in workload.subscribers if len(s.log.connections) > 1]
    assert moved, "some subscribers were on the killed gateway and came back through nginx"


async def _judge(workload: Workload, label: str) -> None:
    """Let every subscriber catch up, print the figures, and hold the run to the promise."""
    report = await workload.finish(settle=30)
    print(f"\n{label}: {report.summary()}")
    assert workload.failures == [], workload.failures
    assert report.ok, report.summary()
    assert (report.lost, report.duplicated, report.reordered) == (0, 0, 0)
