"""gateway.fanout.replay: the gap rule (pure), then start_positions, replay and catch_up against a real Redis and hub.

The Redis tests drive the functions directly with a real Broker, Hub and Subscriber, without HTTP, so they take
milliseconds and can serve as the mutation-testing suite of gateway.fanout.replay (see scripts/mutation.sh).
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest

from gateway.brokers.envelope import from_stream_entry
from gateway.brokers.protocol import Broker
from gateway.brokers.single import SingleNodeBroker
from gateway.config import Settings
from gateway.cursor import ZERO, StreamId, parse_stream_id
from gateway.events import Event
from gateway.fanout.hub import Hub
from gateway.fanout.replay import catch_up, replay, start_positions, trimmed_after
from gateway.fanout.subscriber import Subscriber, gap_frame
from sse_gateway_client import ServerSentEvent, SSEParser
from tests.servers import RedisProcess


def entry(entry_id: str, previous: str) -> Event:
    """A buffered event as a broker reads it; an empty ``previous`` is the first of its stream."""
    return from_stream_entry("a", (entry_id.encode(), {b"p": previous.encode(), b"e": b"", b"d": b"x"}))


def test_position_before_a_trimmed_first_entry_is_a_gap() -> None:
    assert trimmed_after((5, 0), entry("20-0", "10-0")) == (20, 0)


def test_position_equal_to_the_previous_id_is_no_gap() -> None:
    assert trimmed_after((10, 0), entry("20-0", "10-0")) is None


def test_position_between_previous_and_first_is_no_gap() -> None:
    # The cursor is not an id of this stream, but nothing was written between it and the first entry.
    assert trimmed_after((15, 0), entry("20-0", "10-0")) is None


def test_position_one_sequence_before_previous_is_a_gap() -> None:
    assert trimmed_after((10, 0), entry("10-2", "10-1")) == (10, 2)


def test_first_entry_of_its_stream_from_zero_is_no_gap() -> None:
    assert trimmed_after(ZERO, entry("20-0", "")) is None


def test_first_entry_of_its_stream_from_a_non_zero_position_is_a_gap() -> None:
    # The client knew an older stream under this name (deleted, or another server): its events are gone.
    assert trimmed_after((5, 0), entry("20-0", "")) == (20, 0)


def test_first_entry_without_a_p_field_counts_as_first_of_its_stream() -> None:
    unmarked = from_stream_entry("a", (b"20-0", {b"d": b"x"}))
    assert trimmed_after((5, 0), unmarked) == (20, 0)
    assert trimmed_after(ZERO, unmarked) is None


def test_zero_position_after_a_trim_is_a_gap() -> None:
    assert trimmed_after(ZERO, entry("20-0", "10-0")) == (20, 0)


@pytest.mark.parametrize("position", [(20, 0), (20, 1), (30, 0)])
def test_position_at_or_after_the_first_entry_is_never_a_gap(position: tuple[int, int]) -> None:
    assert trimmed_after(position, entry("20-0", "10-0")) is None
    assert trimmed_after(position, entry("20-0", "")) is None


# -- against a real Redis ----------------------------------------------------------------------------------------


@pytest.fixture
async def broker(redis_server: RedisProcess) -> AsyncIterator[SingleNodeBroker]:
    broker = SingleNodeBroker(Settings(redis_url=redis_server.url, key_prefix=f"r{uuid.uuid4().hex[:8]}:"))
    yield broker
    await broker.close()


@pytest.fixture
async def hub(broker: Broker) -> AsyncIterator[Hub]:
    hub = Hub(broker)
    await hub.start()
    yield hub
    await hub.stop()


async def publish(broker: Broker, channel: str, count: int) -> list[StreamId]:
    return [parse_stream_id(await broker.publish(channel, f"m{i}")) for i in range(count)]


async def attach_and_replay(hub: Hub, subscriber: Subscriber, send) -> None:
    """What a stream does: attach (step 1), then the backlog and going live (steps 2 and 3)."""
    if (waiting := hub.attach(subscriber)) is not None:
        await waiting
    await replay(hub.backlog, subscriber, send)


def trim_to(redis_server: RedisProcess, broker: Broker, channel: str, keep: int) -> None:
    """Trim the buffer exactly, as MAXLEN and the age limit do over time."""
    redis_server.client().xtrim(broker.naming.stream_key(channel), maxlen=keep, approximate=False)


def subscriber_at(channel: str, position: StreamId) -> Subscriber:
    subscriber = Subscriber([channel], max_events=100, max_bytes=10**6)
    subscriber.start_at({channel: position})
    return subscriber


def live_subscriber_at(channel: str, position: StreamId) -> Subscriber:
    subscriber = subscriber_at(channel, position)
    subscriber.go_live()
    return subscriber


def wire(frames: bytes) -> list[ServerSentEvent]:
    return SSEParser().feed(frames)


def message(stream_id: StreamId, index: int) -> ServerSentEvent:
    return ServerSentEvent(data=f"m{index}", id=f"{stream_id[0]}-{stream_id[1]}")


def gap(channel: str, requested: StreamId, first_available: StreamId) -> ServerSentEvent:
    return wire(gap_frame(channel, requested, first_available))[0]


async def test_start_positions_keep_the_clients_cursor(hub: Hub) -> None:
    await publish(hub.broker, "a", 3)
    assert await start_positions(hub.backlog, ("a",), {"a": (5, 0)}) == {"a": (5, 0)}


async def test_start_positions_of_a_fresh_stream_are_each_channels_newest_id(hub: Hub) -> None:
    ids = await publish(hub.broker, "a", 3)
    assert await start_positions(hub.backlog, ("a", "empty"), None) == {"a": ids[-1], "empty": ZERO}


async def test_replay_sends_exactly_the_entries_after_the_cursor_then_goes_live(broker: Broker, hub: Hub) -> None:
    ids = await publish(broker, "a", 5)
    subscriber = subscriber_at("a", ids[1])
    writes: list[bytes] = []

    async def send(body: bytes) -> None:
        writes.append(body)

    await attach_and_replay(hub, subscriber, send)
    assert wire(b"".join(writes)) == [message(ids[i], i) for i in (2, 3, 4)]
    assert subscriber.positions == {"a": ids[4]}
    assert not subscriber.replaying
    assert subscriber.channels[0] in hub.broker.upstream.channels  # attached: live events reach it from now on


async def test_replay_of_each_channel_reads_its_own_backlog(broker: Broker, hub: Hub) -> None:
    a_ids, b_ids = await publish(broker, "a", 2), await publish(broker, "b", 3)
    subscriber = Subscriber(["a", "b"], max_events=100, max_bytes=10**6)
    subscriber.start_at({"a": a_ids[0], "b": ZERO})
    writes: list[bytes] = []

    async def send(body: bytes) -> None:
        writes.append(body)

    await attach_and_replay(hub, subscriber, send)
    events = wire(b"".join(writes))
    assert [(e.event, e.data) for e in events] == [("a", "m1"), ("b", "m0"), ("b", "m1"), ("b", "m2")]
    assert subscriber.positions == {"a": a_ids[1], "b": b_ids[2]}


async def test_replay_after_a_trim_sends_one_gap_then_what_is_left(
    broker: Broker, hub: Hub, redis_server: RedisProcess
) -> None:
    ids = await publish(broker, "a", 6)
    trim_to(redis_server, broker, "a", 3)
    subscriber = subscriber_at("a", ids[0])
    writes: list[bytes] = []

    async def send(body: bytes) -> None:
        writes.append(body)

    await attach_and_replay(hub, subscriber, send)
    assert wire(b"".join(writes)) == [gap("a", ids[0], ids[3])] + [message(ids[i], i) for i in (3, 4, 5)]
    assert subscriber.gaps_sent == 1


async def test_replay_trimmed_right_up_to_the_cursor_sends_no_gap(
    broker: Broker, hub: Hub, redis_server: RedisProcess
) -> None:
    ids = await publish(broker, "a", 6)
    trim_to(redis_server, broker, "a", 3)
    subscriber = subscriber_at("a", ids[2])
    writes: list[bytes] = []

    async def send(body: bytes) -> None:
        writes.append(body)

    await attach_and_replay(hub, subscriber, send)
    assert wire(b"".join(writes)) == [message(ids[i], i) for i in (3, 4, 5)]
    assert subscriber.gaps_sent == 0


async def test_replay_after_the_buffer_expired_offers_one_gap_from_the_cursor(
    broker: Broker, hub: Hub, redis_server: RedisProcess
) -> None:
    ids = await publish(broker, "a", 3)
    redis_server.client().delete(broker.naming.stream_key("a"))  # what PEXPIRE does to a channel gone quiet
    subscriber = subscriber_at("a", ids[0])
    writes: list[bytes] = []

    async def send(body: bytes) -> None:
        writes.append(body)

    await attach_and_replay(hub, subscriber, send)
    assert [wire(body) for body in writes] == [[gap("a", ids[0], ZERO)]]  # one write, before the stream goes live
    assert subscriber.gaps_sent == 1
    assert not subscriber.replaying


async def test_replay_of_a_client_already_up_to_date_sends_no_gap(broker: Broker, hub: Hub) -> None:
    ids = await publish(broker, "a", 3)
    subscriber = subscriber_at("a", ids[-1])

    async def send(body: bytes) -> None:
        raise AssertionError(f"nothing to send, yet {body!r} was sent")

    await attach_and_replay(hub, subscriber, send)
    assert subscriber.queued == 0
    assert subscriber.gaps_sent == 0


async def test_replay_from_zero_of_a_channel_without_buffer_sends_no_gap(broker: Broker, hub: Hub) -> None:
    subscriber = subscriber_at("never-published", ZERO)

    async def send(body: bytes) -> None:
        raise AssertionError(f"nothing to send, yet {body!r} was sent")

    await attach_and_replay(hub, subscriber, send)
    assert subscriber.queued == 0
    assert subscriber.gaps_sent == 0


async def test_replay_of_a_closed_subscriber_sends_nothing_and_never_goes_live(broker: Broker, hub: Hub) -> None:
    await publish(broker, "a", 3)
    subscriber = subscriber_at("a", ZERO)
    subscriber.close("shutdown")
    writes: list[bytes] = []

    async def send(body: bytes) -> None:
        writes.append(body)

    await attach_and_replay(hub, subscriber, send)
    assert writes == []
    assert subscriber.replaying


async def test_catch_up_gives_each_listener_what_it_has_not_seen(broker: Broker) -> None:
    ids = await publish(broker, "a", 5)
    behind, ahead = live_subscriber_at("a", ids[1]), live_subscriber_at("a", ids[3])
    await catch_up(broker, "a", [behind, ahead])
    assert wire(behind.take()) == [message(ids[i], i) for i in (2, 3, 4)]
    assert wire(ahead.take()) == [message(ids[4], 4)]
    assert behind.positions == ahead.positions == {"a": ids[4]}


async def test_catch_up_sends_a_gap_to_live_listeners_only(broker: Broker, redis_server: RedisProcess) -> None:
    ids = await publish(broker, "a", 6)
    trim_to(redis_server, broker, "a", 3)
    live, replaying = live_subscriber_at("a", ids[0]), subscriber_at("a", ids[0])
    await catch_up(broker, "a", [live, replaying])
    assert wire(live.take()) == [gap("a", ids[0], ids[3])] + [message(ids[i], i) for i in (3, 4, 5)]
    # A replaying listener holds the events for go_live and checks its own backlog for gaps.
    assert replaying.queued == 0
    replaying.go_live()
    assert wire(replaying.take()) == [message(ids[i], i) for i in (3, 4, 5)]


async def test_catch_up_events_are_the_buffered_entries_of_the_channel(broker: Broker) -> None:
    ids = await publish(broker, "a", 1)
    listener = live_subscriber_at("a", ZERO)
    await catch_up(broker, "a", [listener])
    assert listener.take() == Event("a", ids[0], None, "m0").frame
