"""Every fault, briefly, under live traffic: 20 resuming subscribers (single- and multi-channel) on 3 channels and a
continuous publisher, judged by the invariant checker (no loss, no duplicate, no reordering, exact gaps).

scripts/faults.py runs the same faults for minutes with hundreds of subscribers.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from tests.fault_scenarios import FAULTS, Outcome, Pace, run_fault
from tests.servers import wait_until
from tests.workload import Rig, Workload, channel_names

SUBSCRIBERS, CHANNELS, RATE = 20, 3, 90.0  # RATE: publishes per second, over all channels


@pytest.fixture
async def rig() -> AsyncIterator[Rig]:
    rig = await Rig().start()
    yield rig
    await rig.stop()


async def run(name: str, rig: Rig) -> Outcome:
    outcome = await run_fault(FAULTS[name], rig, channels=CHANNELS, subscribers=SUBSCRIBERS, rate=RATE, pace=Pace())
    print(outcome.summary())
    report = outcome.report
    assert (report.lost, report.duplicated, report.reordered) == (0, 0, 0), outcome.summary()
    assert report.ok, outcome.summary()
    assert outcome.failures == [], outcome.summary()
    assert report.published > 0 and report.delivered > 0, outcome.summary()
    return outcome


@pytest.mark.timeout(90)
async def test_gateway_sigkilled_and_restarted_clients_resume_with_nothing_lost(rig):
    outcome = await run("gateway_killed", rig)
    assert outcome.notes["resumed"] == SUBSCRIBERS


@pytest.mark.timeout(90)
async def test_redis_sigkilled_and_restarted_refuses_publishes_and_delivers_everything_acknowledged(rig):
    outcome = await run("redis_killed", rig)
    assert outcome.notes["refused_503"] > 0


@pytest.mark.timeout(90)
async def test_redis_paused_past_the_socket_timeout_refuses_publishes_and_loses_nothing_acknowledged(rig):
    outcome = await run("redis_paused", rig)
    # The pause was felt: publishes refused with 503 and counted so by the gateway, and /readyz said so meanwhile.
    assert outcome.notes["refused_503"] > 0
    assert outcome.notes["publishes_counted_redis_unavailable"] == outcome.notes["refused_503"]
    assert outcome.notes["readyz_while_paused"] == 503


@pytest.mark.timeout(90)
async def test_stalled_client_is_evicted_others_get_everything_and_it_resumes(rig):
    outcome = await run("stalled_client", rig)
    assert outcome.notes["evicted"] == 2


@pytest.mark.timeout(90)
async def test_clients_dropped_mid_event_leave_the_gateway_healthy_and_resume(rig):
    outcome = await run("dropped_mid_event", rig)
    assert outcome.notes["dropped_inside_an_event"] == 4


@pytest.mark.timeout(90)
async def test_sigterm_ends_every_stream_with_a_retry_and_everyone_resumes_after_the_restart(rig):
    outcome = await run("sigterm_drain", rig)
    assert outcome.notes["ended_with_retry"] == outcome.notes["open_at_sigterm"] == SUBSCRIBERS


@pytest.mark.timeout(90)
async def test_buffer_trimmed_while_away_gives_exactly_one_gap_then_the_rest(rig):
    outcome = await run("buffer_trimmed", rig)
    assert outcome.report.gaps >= 4


@pytest.mark.timeout(60)
async def test_once_redis_is_back_after_a_restart_publishes_and_new_streams_succeed_at_once(rig):
    # Fails while the broker's pool hands out its connections to the dead Redis: each fails its first command.
    gateway = await rig.configure({}, ())
    load = Workload(rig, channel_names(2), subscribers=0, rate=1)
    assert await load.recovery_probe(count=20) == (0, 0)  # also leaves about 20 idle connections in the pool
    await asyncio.to_thread(rig.redis.kill)
    await asyncio.to_thread(rig.redis.start)
    await asyncio.to_thread(wait_until, gateway.ready, what="the gateway ready after Redis restarted")
    refused, turned_away = await load.recovery_probe(count=20)
    await load.finish(settle=1)
    assert (refused, turned_away) == (0, 0), "publishes refused with 503, streams closed before their opening id"
