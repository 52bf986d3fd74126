"""The faults the delivery promise must survive, each injected into real processes under live traffic.

Each fault is a coroutine of a ``Rig`` and a running ``Workload``: it breaks something, lets the traffic run through
the fault and the recovery, ends the workload and returns an ``Outcome``: the checker's report, a few counts that
belong to the fault (refused publishes, streams ended with a retry hint, ...), and the fault's own expectations
that did not hold. ``tests/test_faults.py`` runs each once, briefly; ``scripts/faults.py`` cycles through them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import subprocess
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import httpx

from tests.invariants import Report
from tests.servers import wait_until
from tests.subscribers import RawStream
from tests.workload import Rig, Workload, channel_names, http_status, wait_for


@dataclass(frozen=True)
class Pace:
    """How long and how hard each fault runs."""

    before: float = 1.5  # seconds of traffic before the fault
    after: float = 1.5  # seconds of traffic after the recovery
    settle: float = 20.0  # bound on the wait for every subscriber to catch up at the end
    outage: float = 2.0  # seconds Redis stays dead
    pause: float = 6.0  # seconds Redis stays stopped: past the gateway's 5 s socket timeout
    stall_rounds: int = 30  # at most this many rounds of 25 events of 16 kB published at the stalled clients
    trim_burst: int = 250  # events per channel published while some subscribers are away
    misbehaving: int = 4  # bare-socket clients per fault


@dataclass
class Outcome:
    fault: str
    report: Report
    notes: dict[str, int] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.report.ok and not self.failures

    def summary(self) -> str:
        notes = " ".join(f"{name}={value}" for name, value in self.notes.items())
        failures = "".join(f"\n  FAILED: {failure}" for failure in self.failures)
        return f"{self.fault}: {self.report.summary()}\n  {notes}{failures}"


FaultRun = Callable[[Rig, Workload, Pace], Awaitable[Outcome]]


@dataclass(frozen=True)
class Fault:
    name: str
    run: FaultRun
    env: dict[str, str] = field(default_factory=dict)
    args: tuple[str, ...] = ()


async def run_fault(fault: Fault, rig: Rig, *, channels: int, subscribers: int, rate: float, pace: Pace) -> Outcome:
    """Start a gateway configured for ``fault``, a fresh workload on new channels, and run the fault through."""
    await rig.configure(fault.env, fault.args)
    workload = Workload(rig, channel_names(channels), subscribers=subscribers, rate=rate)
    await workload.start()
    try:
        outcome = await fault.run(rig, workload, pace)
    except BaseException:
        await workload.finish(settle=0)
        raise
    outcome.failures[:0] = workload.failures
    outcome.notes.setdefault("unacknowledged", workload.unacknowledged())
    return outcome


async def gateway_killed(rig: Rig, load: Workload, pace: Pace) -> Outcome:
    """SIGKILL the gateway, publish straight into Redis while it is down, restart it on the same port."""
    assert rig.gateway is not None
    await load.run_for(pace.before)
    await asyncio.to_thread(rig.gateway.kill)
    # Only the replay after the restart can deliver these; more than a page of the backlog (100) per channel.
    await load.publish_direct(per_channel=120)
    await asyncio.to_thread(rig.gateway.start)
    await load.run_for(pace.after)
    report = await load.finish(pace.settle)
    outcome = Outcome("gateway_killed", report)
    resumed = sum(any(c.sent and c.opening == c.sent for c in log.connections[1:]) for log in load.checker.logs)
    outcome.notes["resumed"] = resumed
    if resumed < len(load.checker.logs):
        outcome.failures.append(f"only {resumed} of {len(load.checker.logs)} subscribers resumed with Last-Event-ID")
    return outcome


async def redis_killed(rig: Rig, load: Workload, pace: Pace) -> Outcome:
    """SIGKILL Redis (AOF, fsync always), keep publishing through the outage, restart it."""
    assert rig.gateway is not None
    await load.run_for(pace.before)
    reasons_before = load.checker.unacked_reasons.copy()
    connections_before = sum(len(log.connections) for log in load.checker.logs)
    await asyncio.to_thread(rig.redis.kill)
    await load.run_for(pace.outage)
    await asyncio.to_thread(rig.redis.start)
    # Acknowledged by Redis before the gateway has resubscribed: only its catch-up read can deliver these.
    await load.publish_direct(per_channel=120)
    await asyncio.to_thread(wait_until, rig.gateway.ready, what="the gateway ready after Redis restarted")
    during = load.checker.unacked_reasons - reasons_before
    reconnects = sum(len(log.connections) for log in load.checker.logs) - connections_before
    # Redis is back and /readyz says so: concurrent publishes and new streams should all succeed now.
    refused, turned_away = await load.recovery_probe()
    await load.run_for(pace.after)
    outcome = Outcome("redis_killed", await load.finish(pace.settle))
    outcome.notes.update(refused_503=during["status 503"], reconnects_in_outage=reconnects)
    outcome.notes.update(refused_after_recovery=refused, streams_turned_away_after_recovery=turned_away)
    if not during["status 503"]:
        outcome.failures.append("no publish was refused with 503 while Redis was down")
    if other := {reason: count for reason, count in during.items() if reason != "status 503"}:
        outcome.failures.append(f"publishes failed other than with 503 while Redis was down: {other}")
    return outcome


async def redis_paused(rig: Rig, load: Workload, pace: Pace) -> Outcome:
    """SIGSTOP Redis past the gateway's 5 s socket timeout, then SIGCONT: timed-out publishes may still be stored."""
    assert rig.gateway is not None
    await load.run_for(pace.before)
    reasons_before = load.checker.unacked_reasons.copy()
    unavailable_before = await publish_outcomes(rig.gateway.url, "redis_unavailable")
    rig.redis.pause()
    try:
        # Asked at once: the gateway's ping waits out its 5 s socket timeout, within the pause, and says 503.
        readiness = asyncio.create_task(readyz_while_paused(rig.gateway.url))
        await load.run_for(pace.pause)
        ready_status, ready_error = await readiness
    finally:
        rig.redis.resume()
    await asyncio.to_thread(wait_until, rig.gateway.ready, what="the gateway ready after Redis resumed")
    await load.run_for(pace.after)
    during = load.checker.unacked_reasons - reasons_before
    unavailable = await publish_outcomes(rig.gateway.url, "redis_unavailable") - unavailable_before
    outcome = Outcome("redis_paused", await load.finish(pace.settle))
    outcome.notes.update(refused_503=during["status 503"], unacked_delivered=outcome.report.unacked_delivered)
    outcome.notes.update(readyz_while_paused=ready_status or 0, publishes_counted_redis_unavailable=int(unavailable))
    # The pause must have been felt, or the promise was checked on a healthy run.
    if not during["status 503"]:
        outcome.failures.append("no publish was refused with 503 while Redis was paused")
    if (ready_status, ready_error) != (503, "redis_unavailable"):
        outcome.failures.append(f"/readyz answered {ready_status} {ready_error!r} while Redis was paused, not 503")
    if unavailable != during["status 503"]:
        outcome.failures.append(
            f"sse_publishes_total{{outcome=redis_unavailable}} rose by {unavailable:g}, "
            f"not by the {during['status 503']} publishes refused with 503"
        )
    if other := {reason: count for reason, count in during.items() if reason != "status 503"}:
        outcome.failures.append(f"publishes failed other than with 503 while Redis was paused: {other}")
    return outcome


async def readyz_while_paused(base_url: str) -> tuple[int | None, str | None]:
    """The status and error code of one /readyz, with time to spare for the gateway's own Redis timeout."""
    with contextlib.suppress(httpx.HTTPError):
        async with httpx.AsyncClient(timeout=15) as client:
            response = await client.get(f"{base_url}/readyz")
            return response.status_code, response.json().get("error")
    return None, None


async def publish_outcomes(base_url: str, outcome: str) -> float:
    """The gateway's count of publishes that ended with ``outcome`` (from /metrics; 0 before the first)."""
    async with httpx.AsyncClient(timeout=10) as client:
        text = (await client.get(f"{base_url}/metrics")).text
    match = re.search(rf'^sse_publishes_total{{outcome="{re.escape(outcome)}"}} (\S+)$', text, re.MULTILINE)
    return float(match[1]) if match else 0.0


async def stalled_client(rig: Rig, load: Workload, pace: Pace) -> Outcome:
    """Clients that stop reading while the others go on: they are evicted, and resume with everything."""
    gateway = rig.gateway
    assert gateway is not None
    channel = load.channels[0]
    logs = [
        load.checker.subscriber((channel,), "stalled-single"),
        load.checker.subscriber(load.channels, "stalled-multi"),
    ]
    stalled = [await RawStream(gateway.port, log, receive_buffer=4096).open() for log in logs]
    await load.run_for(pace.before)
    # Big events until both are evicted: the kernel takes a few MB for a socket nobody reads before a write blocks.
    unfinished = gateway.log().count(UNFINISHED_RESPONSE)
    for _ in range(pace.stall_rounds):
        await load.burst(channel, 25, size=16000)
        if gateway.log().count(UNFINISHED_RESPONSE) - unfinished >= len(stalled):
            break
    await load.burst(channel, 25, size=16000)
    others = [log for log in load.checker.logs if log not in logs]
    # Every event was offered to the stalled clients too by the time the others have them all.
    if not await load.checker.wait_settled(pace.settle, logs=others):
        load.failures.append("the other subscribers did not get the burst while clients were stalled")
    outcome = Outcome("stalled_client", Report())
    evicted = 0
    for raw in stalled:
        if await raw.read_to_end(timeout=10):
            evicted += 1
        else:
            outcome.failures.append(f"{raw.log.name} was not disconnected although it stopped reading")
        raw.close()
        load.add_subscriber(raw.log, last_event_id=raw.decoder.last_event_id)
    await load.run_for(pace.after)
    outcome.report = await load.finish(pace.settle)
    outcome.notes["evicted"] = evicted
    for log in logs:
        for name in log.channels:
            if len(log.gaps(name)) > 1:
                outcome.failures.append(f"{log.name} got {len(log.gaps(name))} gaps on {name}, not at most one")
    return outcome


async def dropped_mid_event(rig: Rig, load: Workload, pace: Pace) -> Outcome:
    """Clients hang up (FIN or RST) with half an event frame read; the gateway stays healthy and they resume."""
    assert rig.gateway is not None
    raws = []
    for number in range(pace.misbehaving):
        channels = (load.channels[number % len(load.channels)],) if number % 2 == 0 else tuple(load.channels)
        log = load.checker.subscriber(channels, f"dropped-{number}")
        raws.append(await RawStream(rig.gateway.port, log).open())
    outcome = Outcome("dropped_mid_event", Report())

    async def read_into_an_event(raw: RawStream) -> bool:
        async with asyncio.timeout(15):
            while await raw.receive(7):
                if raw.inside_an_event:
                    return True
        return False

    results = await asyncio.gather(*(read_into_an_event(raw) for raw in raws), return_exceptions=True)
    for number, (raw, result) in enumerate(zip(raws, results, strict=True)):
        if result is not True:
            outcome.failures.append(f"{raw.log.name} could not stop inside an event ({result!r})")
        raw.close(reset=number % 4 >= 2)
    await load.run_for(0.5)
    for path in ("/healthz", "/readyz"):
        if (status := await http_status(rig.gateway.url + path)) != 200:
            outcome.failures.append(f"GET {path} answered {status} after the clients dropped")
    for raw in raws:
        load.add_subscriber(raw.log, last_event_id=raw.decoder.last_event_id)
    await load.run_for(pace.before + pace.after)
    outcome.report = await load.finish(pace.settle)
    outcome.notes["dropped_inside_an_event"] = sum(result is True for result in results)
    if "Exception in ASGI application" in rig.gateway.log():
        outcome.failures.append(f"the gateway logged an exception (log: {rig.gateway.log_path})")
    return outcome


async def sigterm_drain(rig: Rig, load: Workload, pace: Pace) -> Outcome:
    """SIGTERM: every stream ends with a retry hint, the gateway exits, restarts, and everyone resumes."""
    assert rig.gateway is not None
    await load.run_for(pace.before)
    open_streams = [s.decoder.connection for s in load.subscribers if s.connected]
    outcome = Outcome("sigterm_drain", Report())
    try:
        outcome.notes["exit_code"] = await asyncio.to_thread(rig.gateway.terminate, 15)
    except subprocess.TimeoutExpired:
        outcome.failures.append("the gateway did not exit within 15 s of SIGTERM")
        await asyncio.to_thread(rig.gateway.kill)
    await wait_for(lambda: all(c is not None and c.end is not None for c in open_streams), 5)
    with_retry = sum(c is not None and c.end == "end" and c.ended_with_retry for c in open_streams)
    outcome.notes.update(open_at_sigterm=len(open_streams), ended_with_retry=with_retry)
    if with_retry < len(open_streams):
        ends = sorted({f"{c.end} retry={c.ended_with_retry}" for c in open_streams if c is not None})
        outcome.failures.append(f"{len(open_streams) - with_retry} streams did not end with a retry line: {ends}")
    await asyncio.to_thread(rig.gateway.start)
    await load.run_for(pace.after)
    outcome.report = await load.finish(pace.settle)
    return outcome


async def buffer_trimmed(rig: Rig, load: Workload, pace: Pace) -> Outcome:
    """Some subscribers go away while the buffer is trimmed past them: each gets one gap per channel, then the rest."""
    away = load.subscribers[:4]
    await load.run_for(pace.before)
    for subscriber in away:
        await subscriber.pause()
    await asyncio.gather(*(load.burst(channel, pace.trim_burst) for channel in load.channels))
    for subscriber in away:
        subscriber.resume()
    await load.run_for(pace.after)
    outcome = Outcome("buffer_trimmed", await load.finish(pace.settle))
    for subscriber in away:
        log = subscriber.log
        for channel in log.channels:
            gaps = log.gaps(channel)
            if len(gaps) != 1:
                outcome.failures.append(f"{log.name} got {len(gaps)} gaps on {channel}, not one: {json.dumps(gaps)}")
    away_logs = {s.log for s in away}
    outcome.notes["gaps_to_others"] = sum(len(log.gaps()) for log in load.checker.logs if log not in away_logs)
    return outcome


# What uvicorn logs for each evicted client: its response could not end cleanly.
UNFINISHED_RESPONSE = "ASGI callable returned without completing response"
SMALL_CLIENT_BUFFER = {"SSE_GATEWAY_CLIENT_BUFFER_EVENTS": "16", "SSE_GATEWAY_SEND_TIMEOUT": "3"}

FAULTS = {
    fault.name: fault
    for fault in [
        Fault("gateway_killed", gateway_killed),
        Fault("redis_killed", redis_killed),
        Fault("redis_paused", redis_paused),
        Fault("stalled_client", stalled_client, env=SMALL_CLIENT_BUFFER),
        Fault("dropped_mid_event", dropped_mid_event),
        Fault("sigterm_drain", sigterm_drain),
        Fault("buffer_trimmed", buffer_trimmed, args=("--buffer-maxlen", "10")),
    ]
}
