"""Exact resume over HTTP: Last-Event-ID replay, gap events, multi-channel cursors, resume under load."""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Iterator

import httpx
import pytest

from gateway.brokers.single import PUBLISH_SCRIPT
from gateway.cursor import channel_set, parse_cursor
from tests.servers import GatewayProcess, RedisProcess, wait_until
from tests.streams import open_stream, publish, publish_many


@pytest.fixture(scope="module")
def small_buffer_gateway(redis_server) -> Iterator[GatewayProcess]:
    process = GatewayProcess(redis_server.url, "--buffer-maxlen", "10", "--key-prefix", "small:").start()
    yield process
    process.stop()


async def test_resume_by_header_sends_exactly_the_missed_events_then_live(gateway, channel):
    ids = [await publish(gateway.url, channel, f"m{i}") for i in range(5)]
    async with open_stream(f"{gateway.url}/events/{channel}", last_event_id=ids[1]) as stream:
        backlog = await stream.take(3)
        live_id = await publish(gateway.url, channel, "live")
        live = await stream.next_event()
    assert [(e.id, e.data) for e in backlog] == [(ids[2], "m2"), (ids[3], "m3"), (ids[4], "m4")]
    assert (live.id, live.data) == (live_id, "live")


async def test_resume_by_query_parameter_and_header_wins_over_it(gateway, channel):
    ids = [await publish(gateway.url, channel, f"m{i}") for i in range(4)]
    async with open_stream(f"{gateway.url}/events/{channel}", lastEventId=ids[0]) as stream:
        assert [e.data for e in await stream.take(3)] == ["m1", "m2", "m3"]
    # A browser reconnecting keeps the URL's old lastEventId but sends the newer id as a header.
    async with open_stream(f"{gateway.url}/events/{channel}", last_event_id=ids[2], lastEventId=ids[0]) as stream:
        assert [e.data for e in await stream.take(1)] == ["m3"]
        await publish(gateway.url, channel, "after")
        assert (await stream.next_event()).data == "after"


async def test_fresh_connection_gets_only_new_events(gateway, channel):
    await publish(gateway.url, channel, "old")
    async with open_stream(f"{gateway.url}/events/{channel}") as stream:
        await stream.read_raw_until(b"retry:")
        await publish(gateway.url, channel, "new")
        assert (await stream.next_event()).data == "new"


async def test_resume_after_trim_sends_one_gap_event_then_what_is_left(small_buffer_gateway, redis_server, channel):
    url = small_buffer_gateway.url
    ids = await publish_many(url, channel, [f"m{i}" for i in range(250)])
    first_id = ids[0]
    kept = [entry_id.decode() for entry_id, _ in redis_server.client().xrange(f"small:{{{channel}}}:buffer")]
    assert kept[0] != first_id and kept[-1] == ids[-1], "the buffer was not trimmed as the test needs"
    async with open_stream(f"{url}/events/{channel}", last_event_id=first_id) as stream:
        gap = await stream.next_event()
        replayed = await stream.take(len(kept))
        tail_id = await publish(url, channel, "live")
        live = await stream.next_event()
    assert gap.event == "gap"
    assert json.loads(gap.data) == {"channel": channel, "requested": first_id, "first_available": kept[0]}
    assert gap.id == first_id  # a gap never moves the resume point
    assert [e.id for e in replayed] == kept
    assert all(e.event == "message" for e in replayed)
    assert (live.id, live.data) == (tail_id, "live")


async def test_resume_trimmed_right_up_to_the_cursor_sends_no_gap(small_buffer_gateway, redis_server, channel):
    url = small_buffer_gateway.url
    ids = await publish_many(url, channel, [f"m{i}" for i in range(250)])
    kept = [entry_id.decode() for entry_id, _ in redis_server.client().xrange(f"small:{{{channel}}}:buffer")]
    before_first_kept = ids[ids.index(kept[0]) - 1]
    async with open_stream(f"{url}/events/{channel}", last_event_id=before_first_kept) as stream:
        first = await stream.next_event()
    assert (first.event, first.id) == ("message", kept[0])


async def test_multi_channel_events_name_their_channel_and_carry_a_composite_cursor(gateway, channel):
    a, b = f"{channel}-a", f"{channel}-b"
    async with open_stream(f"{gateway.url}/events", channel=[b, a]) as stream:
        await stream.read_raw_until(b"retry:")
        id_a = await publish(gateway.url, a, "to a")
        id_b = await publish(gateway.url, b, "to b", event="news")
        first, second = await stream.take(2)
    assert (first.event, first.data) == (a, "to a")
    assert (second.event, second.data) == (f"{b}:news", "to b")
    positions = parse_cursor(second.id, channel_set([a, b]))
    assert positions == {a: tuple(map(int, id_a.split("-"))), b: tuple(map(int, id_b.split("-")))}
    assert len(second.id) <= 8 + 28 * 2


async def test_multi_channel_resume_through_composite_cursor_is_exact(gateway, channel):
    names = [f"{channel}-{i}" for i in range(3)]
    url = f"{gateway.url}/events"
    async with open_stream(url, channel=names) as stream:
        await stream.read_raw_until(b"retry:")
        for round_ in range(2):
            for name in names:
                await publish(gateway.url, name, f"{name}/{round_}")
        seen = await stream.take(6)
    cursor = seen[3].id  # drop the connection after four events
    for round_ in range(2, 4):
        for name in names:
            await publish(gateway.url, name, f"{name}/{round_}")
    async with open_stream(url, channel=names, last_event_id=cursor) as stream:
        resumed = await stream.take(8)
        await publish(gateway.url, names[0], "live")
        live = await stream.next_event()
    received = [e.data for e in seen[:4]] + [e.data for e in resumed]
    expected = {f"{name}/{round_}" for name in names for round_ in range(4)}
    assert sorted(received) == sorted(expected), "every event exactly once"
    for name in names:
        mine = [d for d in received if d.startswith(name + "/")]
        assert mine == [f"{name}/{r}" for r in range(4)], "each channel in order"
    assert live.data == "live"


async def test_cursor_of_another_channel_set_is_400(gateway, channel):
    async with open_stream(f"{gateway.url}/events", channel=[f"{channel}-a", f"{channel}-b"]) as stream:
        await stream.read_raw_until(b"retry:")
        await publish(gateway.url, f"{channel}-a", "x")
        cursor = (await stream.next_event()).id
    response = httpx.get(
        f"{gateway.url}/events", params={"channel": [f"{channel}-a", f"{channel}-c"]}, headers={"Last-Event-ID": cursor}
    )
    assert response.status_code == 400
    assert response.json()["error"] == "bad_cursor"


async def test_continuous_publishing_with_clients_dropping_and_resuming_loses_and_repeats_nothing(gateway, channel):
    names = [f"{channel}-{i}" for i in range(3)]
    published: dict[str, list[str]] = {name: [] for name in names}
    per_channel = 60

    async def publisher() -> None:
        async with httpx.AsyncClient(timeout=10) as client:
            for i in range(per_channel):
                for name in names:
                    response = await client.post(f"{gateway.url}/publish/{name}", content=f"{name}#{i}")
                    assert response.status_code == 201
                    published[name].append(response.json()["id"])
                await asyncio.sleep(0.005)
            # One more per channel: a client stops at it, and any duplicate of an earlier event came before it.
            for name in names:
                assert (await client.post(f"{gateway.url}/publish/{name}", content=f"{name}#end")).status_code == 201

    async def client(subscribed: list[str], seed: int, connected: asyncio.Event) -> list:
        rng = random.Random(seed)
        received: list = []
        sentinels = {f"{name}#end" for name in subscribed}
        cursor = None
        while True:
            url = f"{gateway.url}/events/{subscribed[0]}" if len(subscribed) == 1 else f"{gateway.url}/events"
            params = {} if len(subscribed) == 1 else {"channel": subscribed}
            async with open_stream(url, last_event_id=cursor, **params) as stream:
                await stream.read_raw_until(b"retry:")
                connected.set()  # its starting position is fixed: everything published from now on is its due
                for _ in range(rng.randint(1, 25)):
                    try:
                        event = await stream.next_event(timeout=10)
                    except TimeoutError:
                        return received  # nothing more is coming; the assertions below say what is missing
                    cursor = event.id
                    if event.data in sentinels:
                        sentinels.discard(event.data)
                        if not sentinels:
                            return received
                    else:
                        received.append(event)
            await asyncio.sleep(rng.random() * 0.05)

    connected = [asyncio.Event() for _ in range(10)]
    tasks = [asyncio.create_task(client([names[i % 3]], i, connected[i])) for i in range(6)]
    tasks += [asyncio.create_task(client(names, 100 + i, connected[6 + i])) for i in range(4)]
    await asyncio.wait_for(asyncio.gather(*(event.wait() for event in connected)), 20)
    await publisher()
    results = await asyncio.gather(*tasks)

    # Clients joined before the first publish and stayed until the end, so each must have everything.
    for index, received in enumerate(results):
        subscribed = [names[index % 3]] if index < 6 else names
        for name in subscribed:
            data = [e.data for e in received if e.data.startswith(name + "#")]
            assert data == [f"{name}#{i}" for i in range(per_channel)], f"client {index} channel {name}"
        assert len(received) == per_channel * len(subscribed), f"client {index} got extra events"


async def test_client_that_saw_no_event_resumes_from_the_opening_id_without_loss(gateway, channel):
    await publish(gateway.url, channel, "before it connected")
    async with open_stream(f"{gateway.url}/events/{channel}") as stream:
        await stream.read_raw_until(b"retry:")
        opening_id = stream.parser.last_event_id
    assert opening_id, "the opening frame carries the starting position"
    missed = await publish_many(gateway.url, channel, ["a", "b", "c"])
    async with open_stream(f"{gateway.url}/events/{channel}", last_event_id=opening_id) as stream:
        assert [e.id for e in await stream.take(3)] == missed


async def test_entries_missing_between_backlog_pages_give_one_gap_at_the_boundary(gateway, redis_server, channel):
    # A trim while page one is being written leaves page two starting past a hole; XDEL makes that hole here.
    redis = redis_server.client()
    key = f"sse:{{{channel}}}:buffer"
    previous = ""
    for seq in range(1, 301):
        redis.xadd(key, {"p": previous, "e": "", "d": f"m{seq}"}, id=f"1-{seq}")
        previous = f"1-{seq}"
    redis.xdel(key, *[f"1-{seq}" for seq in range(101, 151)])
    async with open_stream(f"{gateway.url}/events/{channel}", last_event_id="0-0") as stream:
        events = await stream.take(251)
    gaps = [e for e in events if e.event == "gap"]
    assert len(gaps) == 1
    assert json.loads(gaps[0].data) == {"channel": channel, "requested": "1-100", "first_available": "1-151"}
    data = [e.data for e in events if e.event == "message"]
    assert data == [f"m{seq}" for seq in [*range(1, 101), *range(151, 301)]]
    assert events.index(gaps[0]) == 100


@pytest.mark.timeout(60)
async def test_a_live_client_gets_one_gap_after_an_upstream_reconnect_when_the_buffer_was_trimmed_meanwhile(channel):
    redis_server = RedisProcess().start()
    gateway = GatewayProcess(redis_server.url, "--buffer-maxlen", "10").start()
    try:
        redis = redis_server.client()
        async with open_stream(f"{gateway.url}/events/{channel}") as stream:
            await stream.read_raw_until(b"retry:")
            seen = await publish(gateway.url, channel, "seen")
            assert (await stream.next_event()).id == seen
            # In one transaction: the Pub/Sub connection is cut, then far more than the buffer keeps is published,
            # so none of it arrives live and the catch-up after the reconnect finds its position trimmed away.
            with redis.pipeline(transaction=True) as outage:
                outage.execute_command("CLIENT", "KILL", "TYPE", "pubsub")
                keys = [f"sse:{{{channel}}}:buffer", f"sse:{{{channel}}}"]
                for i in range(250):
                    outage.eval(PUBLISH_SCRIPT, 2, *keys, 10, 0, "", f"m{i}")
                published = [entry_id.decode() for entry_id in outage.execute()[1:]]
            kept = [entry_id.decode() for entry_id, _ in redis.xrange(f"sse:{{{channel}}}:buffer")]
            assert kept[0] != published[0] and kept[-1] == published[-1], "the buffer was not trimmed as needed"
            events = await stream.take(1 + len(kept))
            live = await publish(gateway.url, channel, "live")
            after = await stream.next_event()
        gap, caught_up = events[0], events[1:]
        assert gap.event == "gap"
        assert json.loads(gap.data) == {"channel": channel, "requested": seen, "first_available": kept[0]}
        assert [e.id for e in caught_up] == kept and all(e.event == "message" for e in caught_up)
        assert (after.id, after.data) == (live, "live"), "one gap, then what is left, then live: nothing twice"
    finally:
        gateway.stop()
        redis_server.stop()


@pytest.mark.timeout(60)
async def test_a_stream_left_before_its_subscription_is_confirmed_reads_no_backlog(channel):
    redis_server = RedisProcess().start()
    gateway = GatewayProcess(redis_server.url).start()
    keeper = f"{channel}-keeper"
    try:
        async with open_stream(f"{gateway.url}/events/{keeper}") as kept:
            await kept.read_raw_until(b"retry:")
            fresh = await publish(gateway.url, keeper, "fresh")  # the upstream has just heard from Redis
            assert (await kept.next_event()).id == fresh
            redis_server.pause()
            try:
                async with open_stream(f"{gateway.url}/events/{channel}", last_event_id="0-0") as stream:
                    await stream.read_raw_until(b"retry:")
                await asyncio.to_thread(
                    wait_until, lambda: "reason=client_left" in gateway.log(), what="the stream closed"
                )
                log = gateway.log()  # read while Redis is still paused
            finally:
                redis_server.resume()
        assert "Redis is unreachable" not in log, "the closed stream went on to read its backlog"
    finally:
        gateway.stop()
        redis_server.stop()
