"""The upstream Pub/Sub connection: plain PUBLISH passthrough, one subscription per channel, Redis faults."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import httpx
import pytest
import uvloop

from gateway.brokers import upstream as upstream_module
from gateway.brokers.naming import Naming
from gateway.brokers.upstream import UNSUBSCRIBE_DELAY, Upstream
from gateway.events import Event
from tests.brokers.test_contract import spanning_channels
from tests.servers import GatewayProcess, RedisProcess, wait_until
from tests.streams import open_stream, publish
from tests.test_metrics import _value


async def test_plain_publish_from_another_program_streams_live_without_id(gateway, redis_server, channel):
    async with open_stream(f"{gateway.url}/events/{channel}") as stream:
        await stream.read_raw_until(b"retry:")
        redis_server.client().publish(f"sse:{{{channel}}}", "from redis-cli\nsecond line")
        event_id = await publish(gateway.url, channel, "through the gateway")
        plain, scripted = await stream.take(2)
    # No id line of its own: the client's resume point stays the one the stream opened with (an empty channel).
    assert (plain.event, plain.data, plain.id) == ("message", "from redis-cli\nsecond line", "0-0")
    assert (scripted.data, scripted.id) == ("through the gateway", event_id)
    assert b"id:" not in stream.raw.split(b"from redis-cli")[0].split(b"\n\n")[-1]


async def test_plain_publish_on_multi_channel_stream_is_named_by_channel(gateway, redis_server, channel):
    a, b = f"{channel}-a", f"{channel}-b"
    async with open_stream(f"{gateway.url}/events", channel=[a, b]) as stream:
        await stream.read_raw_until(b"retry:")
        redis_server.client().publish(f"sse:{{{b}}}", "plain")
        event = await stream.next_event()
    assert (event.event, event.data) == (b, "plain")


@pytest.mark.timeout(60)
async def test_many_clients_of_one_channel_share_one_upstream_subscription(redis_server, channel):
    def subscriptions() -> int:
        return redis_server.subscriptions(channel)

    gateway = GatewayProcess(redis_server.url).start()  # its own, so its open-streams gauge counts only these
    try:
        async with open_stream(f"{gateway.url}/events/{channel}") as first:
            await first.read_raw_until(b"retry:")
            others = [open_stream(f"{gateway.url}/events/{channel}") for _ in range(4)]
            streams = [await context.__aenter__() for context in others]
            for stream in streams:
                await stream.read_raw_until(b"retry:")
            assert subscriptions() == 1
            await publish(gateway.url, channel, "to all")
            assert [(await s.next_event()).data for s in [first, *streams]] == ["to all"] * 5
            for context in others:
                await context.__aexit__(None, None, None)
            await asyncio.to_thread(wait_until, lambda: _open_streams(gateway) == 1, what="the four streams closed")
            # Watched for well past the delay after the last of the four left: an unsubscribe now would be too early.
            counts = await asyncio.to_thread(_watch, subscriptions, 3 * UNSUBSCRIBE_DELAY)
            assert set(counts) == {1}, f"one client is still there, yet the subscription count went {counts}"
        await asyncio.to_thread(wait_until, lambda: subscriptions() == 0, what="the last client's unsubscribe")
    finally:
        gateway.stop()


def _open_streams(gateway: GatewayProcess) -> float:
    return _value(httpx.get(f"{gateway.url}/metrics", timeout=5).text, "sse_open_streams")


def _watch(sample, seconds: float) -> list:
    """Every distinct value ``sample()`` took over ``seconds``, in order, checked every 20 ms."""
    values: list = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = sample()
        if not values or values[-1] != value:
            values.append(value)
        time.sleep(0.02)
    return values


@pytest.fixture
def durable_redis() -> Iterator[RedisProcess]:
    server = RedisProcess(appendonly=True).start()
    yield server
    server.stop()


@pytest.fixture
def gateway_on_durable_redis(durable_redis) -> Iterator[GatewayProcess]:
    process = GatewayProcess(durable_redis.url).start()
    yield process
    process.stop()


@pytest.mark.timeout(90)
async def test_redis_killed_and_restarted_loses_nothing_acknowledged(durable_redis, gateway_on_durable_redis, channel):
    url = gateway_on_durable_redis.url
    a, b = f"{channel}-a", f"{channel}-b"
    acknowledged = {a: [], b: []}
    async with (
        open_stream(f"{url}/events/{a}") as single,
        open_stream(f"{url}/events", channel=[a, b]) as multi,
    ):
        await single.read_raw_until(b"retry:")
        await multi.read_raw_until(b"retry:")
        for i in range(5):
            for name in (a, b):
                acknowledged[name].append(await publish(url, name, f"{name} before {i}"))

        durable_redis.kill()
        refused = httpx.post(f"{url}/publish/{a}", content="during the outage")
        assert refused.status_code == 503
        assert refused.json()["error"] == "redis_unavailable"
        assert httpx.get(f"{url}/readyz").status_code == 503
        heard = len(single.raw)
        await single.read_raw_until(b": keepalive\n", after=heard)  # the stream stays open with heartbeats
        assert not single.finished and not multi.finished

        durable_redis.start()
        # Acknowledged by Redis before the gateway resubscribed: only the catch-up read can deliver these.
        for name in (a, b):
            acknowledged[name].append(durable_redis.publish_with_script(name, f"{name} while resubscribing"))
        await asyncio.to_thread(wait_until, gateway_on_durable_redis.ready, what="gateway ready again")
        for i in range(5):
            for name in (a, b):
                acknowledged[name].append(await publish(url, name, f"{name} after {i}"))

        # One more on each channel: a duplicate of anything before would arrive ahead of it (per-channel order).
        for name in (a, b):
            await publish(url, name, SENTINEL)
        single_events = await _before_sentinels(single, 1)
        multi_events = await _before_sentinels(multi, 2)

    assert [e.id for e in single_events] == acknowledged[a], "exactly once, in order"
    for name in (a, b):
        data = [e.data for e in multi_events if e.event == name]
        assert len(data) == len(acknowledged[name]) == 11, "exactly once"
        assert data[0] == f"{name} before 0" and data[5] == f"{name} while resubscribing"
    assert len(multi_events) == 22


SENTINEL = "the last event"


async def _before_sentinels(stream, count: int) -> list:
    """Every event the stream delivers before its ``count``-th SENTINEL."""
    received = []
    while count:
        event = await stream.next_event()
        if event.data == SENTINEL:
            count -= 1
        else:
            received.append(event)
    return received


async def test_clients_coming_and_going_fast_leave_the_channel_working(gateway, redis_server, channel):
    for _ in range(8):
        async with open_stream(f"{gateway.url}/events/{channel}") as stream:
            await stream.read_raw_until(b"retry:")
    async with open_stream(f"{gateway.url}/events/{channel}") as stream:
        await stream.read_raw_until(b"retry:")
        event_id = await publish(gateway.url, channel, "still live")
        assert (await stream.next_event()).id == event_id
    await asyncio.to_thread(wait_until, lambda: redis_server.subscriptions(channel) == 0, what="the unsubscribe")


@pytest.mark.timeout(60)
async def test_new_channels_opened_while_the_upstream_reconnects_get_live_events(redis_server, channel):
    gateway = GatewayProcess(redis_server.url).start()
    try:
        redis_server.client().client_kill_filter(_type="pubsub")
        names = [f"{channel}-{i}" for i in range(5)]
        contexts = [open_stream(f"{gateway.url}/events/{name}") for name in names]
        streams = [await context.__aenter__() for context in contexts]
        for stream in streams:
            await stream.read_raw_until(b"retry:")
        await asyncio.to_thread(wait_until, gateway.ready, what="the upstream back")
        for name, stream in zip(names, streams, strict=True):
            event_id = await publish(gateway.url, name, "after the reconnect")
            assert (await stream.next_event()).id == event_id
        for context in contexts:
            await context.__aexit__(None, None, None)
    finally:
        gateway.stop()


@pytest.mark.timeout(60)
async def test_a_buffer_entry_with_bytes_sse_cannot_carry_is_streamed_with_replacements_after_a_reconnect(
    redis_server, channel
):
    gateway = GatewayProcess(redis_server.url).start()
    odd, good = f"{channel}-odd", f"{channel}-good"
    try:
        async with (
            open_stream(f"{gateway.url}/events/{odd}") as odd_stream,
            open_stream(f"{gateway.url}/events/{good}") as good_stream,
        ):
            await odd_stream.read_raw_until(b"retry:")
            await good_stream.read_raw_until(b"retry:")
            # Written by some other program, bypassing every check: an event type that is not UTF-8 and has a CR.
            redis_server.client().xadd(f"sse:{{{odd}}}:buffer", {"p": "", "e": b"\xff\rx", "d": b"odd \xfe data"})
            redis_server.client().client_kill_filter(_type="pubsub")  # the catch-up will read that entry
            event = await odd_stream.next_event()
            assert (event.event, event.data) == ("message", "odd \ufffd data")
            await asyncio.to_thread(wait_until, gateway.ready, what="the upstream back")
            event_id = await publish(gateway.url, good, "unaffected")
            assert (await good_stream.next_event()).id == event_id
        assert "Traceback" not in gateway.log()
    finally:
        gateway.stop()


@pytest.mark.timeout(60)
async def test_a_catch_up_that_fails_on_a_malformed_entry_is_logged_and_other_channels_stay_live(redis_server, channel):
    gateway = GatewayProcess(redis_server.url).start()
    bad, good = f"{channel}-bad", f"{channel}-good"
    try:
        async with (
            open_stream(f"{gateway.url}/events/{bad}") as bad_stream,
            open_stream(f"{gateway.url}/events/{good}") as good_stream,
        ):
            await bad_stream.read_raw_until(b"retry:")
            await good_stream.read_raw_until(b"retry:")
            # Its previous id is not a stream id: the catch-up's gap check cannot parse it and raises.
            redis_server.client().xadd(f"sse:{{{bad}}}:buffer", {"p": "yesterday", "e": "", "d": "bad"})
            missed = redis_server.client().xadd(f"sse:{{{good}}}:buffer", {"p": "", "e": "", "d": "missed"}).decode()
            redis_server.client().client_kill_filter(_type="pubsub")  # both channels are caught up after it
            await asyncio.to_thread(
                wait_until, lambda: f"catch-up of channel {bad} failed" in gateway.log(), what="the failure logged"
            )
            caught_up = await good_stream.next_event()
            event_id = await publish(gateway.url, good, "live")
            live = await good_stream.next_event()
        assert (caught_up.id, caught_up.data) == (missed, "missed")
        assert (live.id, live.data) == (event_id, "live")
        assert gateway.log().count("redis pub/sub connection lost") == 1, "one reconnect: the kill, not the failure"
    finally:
        gateway.stop()


# Under uvloop, a stop a few milliseconds after the start used to land while the connection wrote its first command,
# where Python 3.11 loses the cancellation (gateway.tasks), and the stop then waited for ever.
START_STOP_DELAYS_MS = [0, 0.25, 0.5, 0.75, 1, 1.25, 1.5, 2, 2.5, 3, 4, 5, 6, 8, 10, 12, 14, 16, 18, 20]
STOP_BOUND = 6.0  # seconds: stop_task's two grace periods and the client's close, with room on a loaded machine


@pytest.mark.timeout(120)
def test_upstream_started_then_stopped_at_any_small_delay_stops_in_bounded_time_under_uvloop(redis_server):
    async def start_then_stop(delay: float) -> float:
        upstream = Upstream(
            redis_server.url, Naming("sse:"), lambda event: None, lambda channel, until: asyncio.sleep(0)
        )
        upstream.subscribe("start-stop")  # a channel to subscribe, as when a stream opens at once
        await upstream.start()
        await asyncio.sleep(delay)
        loop = asyncio.get_running_loop()
        started = loop.time()
        stopping = asyncio.ensure_future(upstream.stop())
        # asyncio.wait, not wait_for: on this Python wait_for could itself drop the cancel it is here to bound.
        done, _ = await asyncio.wait({stopping}, timeout=STOP_BOUND * 3)
        assert done, f"stop after {delay * 1000:.2f} ms had not returned after {STOP_BOUND * 3}s"
        stopping.result()
        return loop.time() - started

    async def every_delay() -> list[tuple[float, float]]:
        return [(ms, await start_then_stop(ms / 1000)) for ms in START_STOP_DELAYS_MS for _ in range(3)]

    durations = uvloop.run(every_delay())
    slow = [(ms, round(took, 2)) for ms, took in durations if took > STOP_BOUND]
    assert not slow, f"stops that took longer than {STOP_BOUND}s, by delay in ms: {slow}"


@pytest.mark.timeout(60)
async def test_redis_silent_past_the_limit_is_dropped_and_live_events_flow_again_once_it_answers(own_redis, channel):
    gateway = GatewayProcess(own_redis.url).start()
    try:
        async with open_stream(f"{gateway.url}/events/{channel}") as stream:
            await stream.read_raw_until(b"retry:")
            before = await publish(gateway.url, channel, "before")
            assert (await stream.next_event()).id == before
            own_redis.pause()  # the connection stays open and says nothing: only the silence check can tell
            try:
                await asyncio.to_thread(
                    wait_until, lambda: "no reply from Redis" in gateway.log(), what="the silent connection dropped"
                )
            finally:
                own_redis.resume()
            await asyncio.to_thread(wait_until, gateway.ready, what="the gateway ready again")
            event_id = await publish(gateway.url, channel, "after")
            event = await stream.next_event()
        assert (event.id, event.data) == (event_id, "after")
        assert "redis pub/sub connection lost (no reply from Redis for 1" in gateway.log()
    finally:
        gateway.stop()


@pytest.mark.timeout(60)
async def test_a_catch_up_that_gets_a_redis_error_reconnects_and_catches_up_again(own_redis, channel):
    gateway = GatewayProcess(own_redis.url).start()
    redis = own_redis.client()
    buffer, aside = f"sse:{{{channel}}}:buffer", f"sse:{{{channel}}}:aside"
    try:
        async with open_stream(f"{gateway.url}/events/{channel}") as stream:
            await stream.read_raw_until(b"retry:")
            first = await publish(gateway.url, channel, "before")
            assert (await stream.next_event()).id == first
            # The buffer is set aside and a string put in its place: every catch-up read of it gets WRONGTYPE.
            redis.rename(buffer, aside)
            redis.set(buffer, "not a stream")
            # Stored while the connection is down (so never published): only a catch-up can deliver them.
            second = redis.xadd(aside, {"p": first, "e": "", "d": "missed 1"}).decode()
            third = redis.xadd(aside, {"p": second, "e": "", "d": "missed 2"}).decode()
            redis.client_kill_filter(_type="pubsub")
            await asyncio.to_thread(
                wait_until, lambda: gateway.log().count("WRONGTYPE") >= 2, what="a catch-up failed, and again"
            )
            with redis.pipeline(transaction=True) as restore:
                restore.delete(buffer).rename(aside, buffer).execute()
            missed = await stream.take(2)
            assert [(e.id, e.data) for e in missed] == [(second, "missed 1"), (third, "missed 2")]
            await asyncio.to_thread(wait_until, gateway.ready, what="the upstream up")
            event_id = await publish(gateway.url, channel, "live")
            live = await stream.next_event()
        assert (live.id, live.data) == (event_id, "live"), "nothing twice, and live again"
        assert "catch-up of channel" not in gateway.log(), "a Redis error is the connection's, not the channel's"
    finally:
        gateway.stop()


@pytest.mark.timeout(60)
async def test_a_channel_left_while_its_subscribe_is_unanswered_ends_unsubscribed_and_still_works(own_redis, channel):
    gateway = GatewayProcess(own_redis.url).start()
    keeper = f"{channel}-keeper"
    try:
        async with open_stream(f"{gateway.url}/events/{keeper}") as kept:
            await kept.read_raw_until(b"retry:")
            # A message just read: the pause below stays far inside the silence limit, so the connection is kept.
            fresh = await publish(gateway.url, keeper, "fresh")
            assert (await kept.next_event()).id == fresh
            own_redis.pause()
            try:
                # A resume needs no Redis to start, so the stream reaches its SUBSCRIBE, which Redis cannot answer.
                async with open_stream(f"{gateway.url}/events/{channel}", last_event_id="0-0") as stream:
                    await stream.read_raw_until(b"retry:")
                await asyncio.to_thread(
                    wait_until, lambda: "reason=client_left" in gateway.log(), what="the stream closed"
                )
                await asyncio.sleep(1.5 * UNSUBSCRIBE_DELAY)  # the unsubscribe is due now, but must wait for the answer
            finally:
                own_redis.resume()
            await asyncio.to_thread(wait_until, lambda: own_redis.subscriptions(channel) == 0, what="the unsubscribe")
            assert own_redis.subscriptions(keeper) == 1
            assert "no reply from Redis" not in gateway.log(), "the pause outlasted the silence limit: not this path"
            async with open_stream(f"{gateway.url}/events/{channel}") as again:
                await again.read_raw_until(b"retry:")
                event_id = await publish(gateway.url, channel, "live")
                assert (await again.next_event()).id == event_id
    finally:
        gateway.stop()


async def test_a_live_message_pubsub_missed_is_read_from_the_buffer_before_the_next_one(gateway, redis_server, channel):
    # Pub/Sub is a doorbell: an entry in the buffer that was never published (as when Redis drops a subscriber's
    # output, or a failover loses a message) shows up as the previous id of the next envelope.
    raw = redis_server.client()
    missed_before = _value(httpx.get(f"{gateway.url}/metrics").text, "sse_missed_live_total")
    async with open_stream(f"{gateway.url}/events/{channel}") as stream:
        await stream.read_raw_until(b"retry:")
        first = await publish(gateway.url, channel, "first")
        assert (await stream.next_event()).id == first
        unpublished, previous = [], first
        for data in ("never published 1", "never published 2"):  # written as the script writes, and not published
            previous = raw.xadd(f"sse:{{{channel}}}:buffer", {"p": previous, "e": "", "d": data}).decode()
            unpublished.append(previous)
        last = await publish(gateway.url, channel, "last")
        events = [await stream.next_event() for _ in range(3)]
    assert [(e.id, e.data) for e in events] == [
        (unpublished[0], "never published 1"),
        (unpublished[1], "never published 2"),
        (last, "last"),
    ]
    assert _value(httpx.get(f"{gateway.url}/metrics").text, "sse_missed_live_total") == missed_before + 1


async def test_a_sharded_subscribe_sent_to_the_wrong_node_moves_that_channel_only(redis_cluster):
    # A slot map older than the node's makes an SSUBSCRIBE land on a node that answers MOVED: that channel must go
    # to its owner, and the node's other channels stay subscribed on the same connection.
    here, elsewhere = spanning_channels(redis_cluster, "mv")[:2]
    node = redis_cluster.owner_of(f"sse:{{{here}}}")
    events: list[Event] = []
    troubled: list[str | None] = []
    upstream = Upstream(
        f"redis://127.0.0.1:{node.port}",
        Naming("sse:"),
        events.append,
        lambda channel, until: asyncio.sleep(0),
        sharded=True,
        on_trouble=troubled.append,
    )
    await upstream.start()
    try:
        async with asyncio.timeout(10):
            await upstream.subscribe(here).wait()
            upstream.subscribe(elsewhere)  # its slot is on another primary
            while elsewhere not in upstream.unsent():
                await asyncio.sleep(0.01)  # polling a condition, with a bound
        assert troubled == [elsewhere]
        node.client().spublish(f"sse:{{{here}}}", "still here")
        async with asyncio.timeout(10):
            while not events:
                await asyncio.sleep(0.01)
        assert [e.data for e in events] == ["still here"]
        assert upstream.reconnects == 0, "the connection was kept"
    finally:
        await upstream.stop()


async def test_a_channel_handed_over_after_its_last_subscriber_left_is_let_go_not_kept_for_ever(redis_server):
    # Its delayed unsubscribe belonged to the old upstream; adopting it would leave it subscribed with nobody left.
    def upstream() -> Upstream:
        return Upstream(redis_server.url, Naming("sse:"), lambda event: None, lambda channel, until: asyncio.sleep(0))

    old, new = upstream(), upstream()
    old.subscribe("idle")
    old.unsubscribe("idle")
    old.subscribe("busy")
    for channel in ("idle", "busy"):
        state = old.release(channel)
        assert state is not None
        new.adopt(channel, state)
    assert (new.holds("idle"), new.holds("busy")) == (False, True)
    assert new.channels == ["busy"]


@pytest.mark.timeout(60)
async def test_a_quiet_but_healthy_connection_is_pinged_and_kept(own_redis, monkeypatch):
    # Silence alone is not death: past SILENCE_BEFORE_PING the upstream pings, Redis answers, and the connection stays.
    monkeypatch.setattr(upstream_module, "SILENCE_BEFORE_PING", 1.5)  # our own constant, to keep the test short
    events: list[Event] = []
    upstream = Upstream(own_redis.url, Naming("sse:"), events.append, lambda channel, until: asyncio.sleep(0))
    channel = "quiet-" + str(time.monotonic_ns())
    pings_before = _pings(own_redis)
    await upstream.start()
    try:
        async with asyncio.timeout(10):
            await upstream.subscribe(channel).wait()
        # Well past twice the silence limit with nothing published: only the pings' answers were heard.
        await asyncio.to_thread(wait_until, lambda: _pings(own_redis) >= pings_before + 2, what="two pings")
        assert upstream.reconnects == 0, "a healthy connection was dropped for being quiet"
        own_redis.client().publish(f"sse:{{{channel}}}", "still subscribed")
        async with asyncio.timeout(10):
            while not events:
                await asyncio.sleep(0.01)  # polling a condition, with a bound
        assert [e.data for e in events] == ["still subscribed"]
    finally:
        await upstream.stop()


def _pings(redis: RedisProcess) -> int:
    stats = redis.client().info("commandstats").get("cmdstat_ping", {})
    return int(stats.get("calls", 0))
