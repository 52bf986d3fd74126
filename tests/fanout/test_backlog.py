"""gateway.fanout.backlog and the rings behind it, with a real Redis, Broker, Hub and Subscribers (no HTTP): resumes
from memory send no Redis command and lose nothing at the ring's edges, at a reconnect or at a missed message, and
streams resuming at once share their page reads.

Redis's own count of commands (INFO commandstats) is the witness for "no Redis command", on a Redis of this module's.
"""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import AsyncIterator, Iterator

import pytest

import gateway.fanout.hub as hub_module
from gateway.brokers.single import PUBLISH_SCRIPT, SingleNodeBroker
from gateway.config import Settings
from gateway.cursor import ZERO, StreamId, parse_stream_id
from gateway.events import Event
from gateway.fanout.hub import NO_RING, Hub
from gateway.fanout.recent import Limits
from gateway.fanout.replay import replay, start_positions
from gateway.fanout.subscriber import Subscriber
from sse_gateway_client import SSEParser
from tests.servers import RedisProcess

READS = ("xrange", "xrevrange", "exists")
RINGS = Limits(events=1000, bytes=10**7, total_events=10**5, total_bytes=10**8, max_age_ms=0, expiry_ms=0)


@pytest.fixture(scope="module")
def redis() -> Iterator[RedisProcess]:
    server = RedisProcess().start()
    yield server
    server.stop()


@pytest.fixture
async def broker(redis: RedisProcess) -> AsyncIterator[SingleNodeBroker]:
    broker = SingleNodeBroker(Settings(redis_url=redis.url, key_prefix=f"b{uuid.uuid4().hex[:8]}:"))
    yield broker
    await broker.close()


async def started_hub(broker: SingleNodeBroker, recent: Limits = RINGS) -> Hub:
    hub = Hub(broker, recent=recent)
    await hub.start()
    return hub


@pytest.fixture
async def hub(broker: SingleNodeBroker) -> AsyncIterator[Hub]:
    hub = await started_hub(broker)
    yield hub
    await hub.stop()


def reads(redis: RedisProcess) -> int:
    """Backlog and tail reads Redis has run so far for anyone but the publish script, which reads the newest entry
    once a run (commandstats counts a script's commands too)."""
    stats = redis.client().info("commandstats")
    calls = {name: stats.get(f"cmdstat_{name}", {}).get("calls", 0) for name in (*READS, "evalsha", "eval")}
    return sum(calls[name] for name in READS) - calls["evalsha"] - calls["eval"]


class Reader:
    """A stream without HTTP: attach, replay, then live; it records the ids it was sent, in order."""

    def __init__(self, hub: Hub, channel: str) -> None:
        self.hub, self.channel = hub, channel
        self.subscriber = Subscriber([channel], max_events=10_000, max_bytes=10**8)
        self.parser = SSEParser()
        self.ids: list[str] = []

    async def resume(self, cursor: StreamId | None) -> Reader:
        positions = await start_positions(
            self.hub.backlog, (self.channel,), None if cursor is None else {self.channel: cursor}
        )
        self.subscriber.start_at(positions)
        if (waiting := self.hub.attach(self.subscriber)) is not None:
            await waiting
        await replay(self.hub.backlog, self.subscriber, self._sent)
        return self

    async def _sent(self, body: bytes) -> None:
        self.ids += [event.id for event in self.parser.feed(body) if event.event == "message"]

    async def until(self, last: str, timeout: float = 10.0) -> list[str]:
        """Every id sent, once the one with id ``last`` is among them (live ones are taken from the queue)."""
        async with asyncio.timeout(timeout):
            while last not in self.ids:
                if self.subscriber.queued:
                    await self._sent(self.subscriber.take())
                else:
                    await asyncio.sleep(0.005)
        return self.ids

    def leave(self) -> None:
        self.subscriber.close("client_left")
        self.hub.detach(self.subscriber)


async def publish(broker: SingleNodeBroker, channel: str, count: int) -> list[str]:
    return [await broker.publish(channel, f"m{n}") for n in range(count)]


def store_without_publishing(redis: RedisProcess, broker: SingleNodeBroker, channel: str) -> str:
    """An event buffered whose live message never comes: what Pub/Sub drops at a disconnect."""
    keys = [broker.naming.stream_key(channel), broker.naming.pubsub_channel(channel)]
    stream_id, _ = redis.client().eval(PUBLISH_SCRIPT, 2, *keys, 1000, 0, "", "dropped", 0, "LATER")
    return stream_id.decode()


async def ring_reached(hub: Hub, channel: str, last: str) -> None:
    """Wait until the channel's ring holds the event with id ``last``."""
    async with asyncio.timeout(10):
        while hub.recent.newest(channel) != parse_stream_id(last):
            await asyncio.sleep(0.005)


def at(stream_id: str) -> StreamId:
    return parse_stream_id(stream_id)


async def test_a_resume_inside_the_ring_sends_no_redis_command_while_events_are_published(
    hub: Hub, broker: SingleNodeBroker, redis: RedisProcess
) -> None:
    holder = await Reader(hub, "a").resume(ZERO)
    ids = await publish(broker, "a", 30)
    await ring_reached(hub, "a", ids[-1])
    before = reads(redis)
    more = asyncio.create_task(publish(broker, "a", 30))
    resumed = [await Reader(hub, "a").resume(at(ids[n])) for n in (0, 10, 29)]
    ids += await more
    assert reads(redis) == before, "a resume inside the ring read Redis"
    for reader, n in zip(resumed, (0, 10, 29), strict=True):
        assert await reader.until(ids[-1]) == ids[n + 1 :]
    assert await holder.until(ids[-1]) == ids


async def test_a_fresh_stream_of_a_channel_with_a_ring_starts_with_no_redis_command(
    hub: Hub, broker: SingleNodeBroker, redis: RedisProcess
) -> None:
    await Reader(hub, "a").resume(ZERO)
    ids = await publish(broker, "a", 3)
    await ring_reached(hub, "a", ids[-1])
    before = reads(redis)
    fresh = await Reader(hub, "a").resume(None)
    assert reads(redis) == before
    assert fresh.subscriber.last_event_id == ids[-1]
    later = await publish(broker, "a", 2)
    assert await fresh.until(later[-1]) == later


async def test_a_resume_just_older_than_the_ring_reads_redis_and_has_no_duplicate_at_the_seam(
    broker: SingleNodeBroker, redis: RedisProcess
) -> None:
    hub = await started_hub(broker, Limits(10, 10**7, 10**5, 10**8, 0, 0))
    try:
        await Reader(hub, "a").resume(ZERO)
        ids = await publish(broker, "a", 30)
        await ring_reached(hub, "a", ids[-1])
        before = reads(redis)
        inside = await Reader(hub, "a").resume(at(ids[19]))  # the ring holds 20..29 and vouches from 19
        assert reads(redis) == before
        older = await Reader(hub, "a").resume(at(ids[18]))
        assert reads(redis) > before
        live = await publish(broker, "a", 2)
        assert await inside.until(live[-1]) == ids[20:] + live
        assert await older.until(live[-1]) == ids[19:] + live
    finally:
        await hub.stop()


async def test_a_resume_between_a_missed_message_and_its_discovery_gets_it_too(
    hub: Hub, broker: SingleNodeBroker, redis: RedisProcess
) -> None:
    holder = await Reader(hub, "a").resume(ZERO)
    ids = await publish(broker, "a", 5)
    await ring_reached(hub, "a", ids[-1])
    dropped = store_without_publishing(redis, broker, "a")
    resumed = await Reader(hub, "a").resume(at(ids[1]))  # the ring does not know of `dropped` yet
    after = await publish(broker, "a", 1)  # its previous id shows the missed one: a catch-up reads it
    expected = [*ids, dropped, *after]
    assert await resumed.until(after[-1]) == expected[2:]
    assert await holder.until(after[-1]) == expected
    assert hub.backlog.in_memory("a", at(ids[0])) is not None, "the catch-up should have filled the ring's span"


async def test_a_resume_across_an_upstream_reconnect_gets_what_the_connection_missed(
    hub: Hub, broker: SingleNodeBroker, redis: RedisProcess
) -> None:
    holder = await Reader(hub, "a").resume(ZERO)
    ids = await publish(broker, "a", 5)
    await ring_reached(hub, "a", ids[-1])
    assert broker.upstream is not None
    reconnects = broker.upstream.reconnects
    redis.client().client_kill_filter(_type="pubsub")
    dropped = store_without_publishing(redis, broker, "a")  # published while the connection was down
    resumed = await Reader(hub, "a").resume(at(ids[2]))
    async with asyncio.timeout(10):
        while broker.upstream.reconnects == reconnects or not broker.live:
            await asyncio.sleep(0.01)
    after = await publish(broker, "a", 1)
    expected = [*ids, dropped, *after]
    assert await resumed.until(after[-1]) == expected[3:]
    assert await holder.until(after[-1]) == expected


async def test_a_ring_whose_channel_has_no_listener_at_a_missed_message_vouches_for_nothing_before_it(
    hub: Hub, broker: SingleNodeBroker, redis: RedisProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(hub_module, "FORGET_DELAY", 60.0)  # the ring outlives its last listener for this test
    holder = await Reader(hub, "a").resume(ZERO)
    ids = await publish(broker, "a", 5)
    await ring_reached(hub, "a", ids[-1])
    holder.leave()  # the channel stays subscribed a moment, and its ring with it
    dropped = store_without_publishing(redis, broker, "a")
    after = await publish(broker, "a", 1)
    await ring_reached(hub, "a", after[-1])
    async with asyncio.timeout(10):
        while hub.recent.held("a") != 1:  # nobody read the missed one, so the span restarts after it
            await asyncio.sleep(0.005)
    assert [event.stream_id for event in hub.recent.since("a", at(dropped)) or ()] == [at(after[0])]
    assert hub.recent.since("a", at(ids[-1])) is None
    resumed = await Reader(hub, "a").resume(at(ids[2]))
    assert await resumed.until(after[-1]) == [*ids[3:], dropped, *after]


async def reconnected(broker: SingleNodeBroker, redis: RedisProcess) -> None:
    """Cut the Pub/Sub connection, and return once the upstream has a new one."""
    assert broker.upstream is not None
    reconnects = broker.upstream.reconnects
    redis.client().client_kill_filter(_type="pubsub")
    async with asyncio.timeout(10):
        while broker.upstream.reconnects == reconnects or not broker.live:
            await asyncio.sleep(0.01)


async def test_a_ring_kept_past_its_last_listener_vouches_for_nothing_across_a_reconnect(
    hub: Hub, broker: SingleNodeBroker, redis: RedisProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(hub_module, "FORGET_DELAY", 60.0)
    holder = await Reader(hub, "a").resume(ZERO)
    ids = await publish(broker, "a", 5)
    await ring_reached(hub, "a", ids[-1])
    holder.leave()  # the reconnect then drops the channel's subscription, which nobody wants
    dropped = store_without_publishing(redis, broker, "a")
    await reconnected(broker, redis)
    resumed = await Reader(hub, "a").resume(at(ids[2]))  # subscribes afresh: nothing will catch `dropped` up
    after = await publish(broker, "a", 1)
    assert await resumed.until(after[-1]) == [*ids[3:], dropped, *after]


async def test_a_ring_whose_listeners_had_all_closed_at_a_reconnect_vouches_for_nothing_before_it(
    hub: Hub, broker: SingleNodeBroker, redis: RedisProcess
) -> None:
    holder = await Reader(hub, "a").resume(ZERO)
    ids = await publish(broker, "a", 5)
    await ring_reached(hub, "a", ids[-1])
    holder.subscriber.close("client_left")  # closed, not yet detached: still subscribed, but nobody to catch up
    dropped = store_without_publishing(redis, broker, "a")
    await reconnected(broker, redis)
    resumed = await Reader(hub, "a").resume(at(ids[2]))
    after = await publish(broker, "a", 1)
    assert await resumed.until(after[-1]) == [*ids[3:], dropped, *after]


class GapReader(Reader):
    """A Reader that keeps the gap events it is sent too."""

    def __init__(self, hub: Hub, channel: str) -> None:
        super().__init__(hub, channel)
        self.gaps: list[str] = []

    async def _sent(self, body: bytes) -> None:
        for event in self.parser.feed(body):
            if event.event == "gap":
                self.gaps.append(event.data)
            else:
                self.ids.append(event.id)


async def test_a_trimmed_buffer_gives_the_same_answer_with_rings_as_without(
    broker: SingleNodeBroker, redis: RedisProcess
) -> None:
    # Rings as long as the buffer, which is trimmed to exactly that (MAXLEN keeps at least as many).
    answers = {}
    for name, recent in (("rings", Limits(5, 10**7, 10**5, 10**8, 0, 0)), ("redis only", NO_RING)):
        hub = await started_hub(broker, recent)
        channel = f"trimmed-{name}"
        try:
            await Reader(hub, channel).resume(ZERO)
            ids = await publish(broker, channel, 20)
            if recent.events:
                await ring_reached(hub, channel, ids[-1])
            redis.client().xtrim(broker.naming.stream_key(channel), maxlen=5, approximate=False)
            trimmed_past = await GapReader(hub, channel).resume(at(ids[2]))
            at_the_edge = await GapReader(hub, channel).resume(at(ids[14]))
            answers[name] = [(reader.gaps, reader.ids) for reader in (trimmed_past, at_the_edge)]
            gap = f'{{"channel":"{channel}","requested":"{ids[2]}","first_available":"{ids[15]}"}}'
            assert answers[name] == [([gap], ids[15:]), ([], ids[15:])]
        finally:
            await hub.stop()


async def test_many_streams_resuming_at_once_with_different_cursors_each_get_exactly_theirs(
    broker: SingleNodeBroker,
) -> None:
    hub = await started_hub(broker, Limits(50, 10**7, 10**5, 10**8, 0, 0))
    try:
        await Reader(hub, "a").resume(ZERO)
        ids = await publish(broker, "a", 200)
        await ring_reached(hub, "a", ids[-1])
        cursors = [random.randrange(len(ids)) for _ in range(60)]  # inside the ring and older than it
        more = asyncio.create_task(publish(broker, "a", 50))
        readers = await asyncio.gather(*(Reader(hub, "a").resume(at(ids[n])) for n in cursors))
        ids += await more
        for reader, n in zip(readers, cursors, strict=True):
            assert await reader.until(ids[-1]) == ids[n + 1 :]
    finally:
        await hub.stop()


async def test_streams_resuming_one_channel_at_once_share_each_page_read(
    broker: SingleNodeBroker, redis: RedisProcess
) -> None:
    hub = await started_hub(broker, NO_RING)
    try:
        await Reader(hub, "a").resume(ZERO)
        ids = await publish(broker, "a", 250)  # three pages
        before = reads(redis)
        readers = await asyncio.gather(*(Reader(hub, "a").resume(at(ids[9])) for _ in range(30)))
        assert reads(redis) - before == 3
        for reader in readers:
            assert await reader.until(ids[-1]) == ids[10:]
    finally:
        await hub.stop()


@pytest.mark.parametrize("start", ["resume", "fresh"])
async def test_a_read_overtaken_by_a_live_event_is_not_shared_with_a_later_stream(
    broker: SingleNodeBroker, redis: RedisProcess, start: str
) -> None:
    # A resume's page read, or a fresh stream's read of the channel's newest id.
    count = (lambda: reads(redis)) if start == "resume" else (lambda: calls(redis, "xrevrange"))
    hub = await started_hub(broker, NO_RING)
    try:
        await Reader(hub, "a").resume(ZERO)
        ids = await publish(broker, "a", 5)
        cursor = at(ids[0]) if start == "resume" else None
        before = count()
        first = asyncio.create_task(Reader(hub, "a").resume(cursor))
        async with asyncio.timeout(5):
            while not hub.backlog.reading:  # its read is on its way to Redis
                await asyncio.sleep(0)
        # A live event reaches the hub while that read is out: one published after Redis ran it, say.
        hub.deliver(Event("a", (at(ids[-1])[0] + 1, 0), None, "overtaking", at(ids[-1])))
        second = asyncio.create_task(Reader(hub, "a").resume(cursor))
        await asyncio.gather(first, second)
        assert count() - before == 2
        third = [Reader(hub, "a") for _ in range(3)]
        await asyncio.gather(*(reader.resume(cursor) for reader in third))
        assert count() - before == 3  # nothing overtook this one: the three shared it
    finally:
        await hub.stop()


class BodyReader(Reader):
    """A Reader that keeps the bodies it was sent, to see which are the same object."""

    def __init__(self, hub: Hub, channel: str, subscriber: Subscriber | None = None) -> None:
        super().__init__(hub, channel)
        if subscriber is not None:
            self.subscriber = subscriber
        self.bodies: list[bytes] = []

    async def _sent(self, body: bytes) -> None:
        self.bodies.append(body)
        await super()._sent(body)


@pytest.mark.parametrize("source", ["ring", "redis"])
async def test_streams_replaying_one_span_share_its_joined_bytes_and_others_still_get_exactly_theirs(
    broker: SingleNodeBroker, source: str
) -> None:
    hub = await started_hub(broker, RINGS if source == "ring" else NO_RING)
    try:
        await Reader(hub, "a").resume(ZERO)
        ids = await publish(broker, "a", 40)
        if source == "ring":
            await ring_reached(hub, "a", ids[-1])
        plain = [BodyReader(hub, "a") for _ in range(20)]
        # Streams whose frames differ from the events' own: several channels, or conflation.
        multi = BodyReader(hub, "a", Subscriber(["a", "b"], max_events=10_000, max_bytes=10**8))
        conflated = BodyReader(hub, "a", Subscriber(["a"], max_events=10_000, max_bytes=10**8, conflate=["a"]))
        multi.subscriber.start_at({"a": at(ids[9]), "b": ZERO})
        await asyncio.gather(*(reader.resume(at(ids[9])) for reader in plain))
        for reader in (multi, conflated):
            if reader is conflated:
                reader.subscriber.start_at({"a": at(ids[9])})
            if (waiting := hub.attach(reader.subscriber)) is not None:
                await waiting
            await replay(hub.backlog, reader.subscriber, reader._sent)
        first = plain[0].bodies[0]
        assert all(reader.bodies[0] is first for reader in plain), "each stream joined the span for itself"
        assert len(hub.backlog.joined) == 1
        for reader in plain:
            assert reader.ids == ids[10:]
        # A multi-channel stream's events are named by channel and carry a cursor of both: its own frames.
        sent = [event for body in multi.bodies for event in SSEParser().feed(body)]
        assert [(event.event, event.data) for event in sent] == [("a", f"m{n}") for n in range(10, 40)]
        assert conflated.ids == [ids[-1]]  # conflated: only the newest of the backlog, as before
    finally:
        await hub.stop()


def calls(redis: RedisProcess, command: str) -> int:
    return redis.client().info("commandstats").get(f"cmdstat_{command}", {}).get("calls", 0)


async def test_fresh_streams_starting_at_once_share_one_read_of_the_tail(
    broker: SingleNodeBroker, redis: RedisProcess
) -> None:
    hub = await started_hub(broker, NO_RING)  # no ring: every fresh start asks Redis for the channel's newest id
    try:
        await Reader(hub, "a").resume(ZERO)
        await publish(broker, "a", 5)
        before = calls(redis, "xrevrange")
        readers = await asyncio.gather(*(Reader(hub, "a").resume(None) for _ in range(30)))
        assert calls(redis, "xrevrange") - before == 1
        more = await publish(broker, "a", 3)
        for reader in readers:
            assert await reader.until(more[-1]) == more  # from the newest id on: nothing older, nothing missed
    finally:
        await hub.stop()
