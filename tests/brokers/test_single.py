"""gateway.brokers.single against a real Redis: the atomic publish script, trimming, backlog pages, failures."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable, Iterator

import pytest
import redis

from gateway.brokers.envelope import decode_pubsub, from_stream_entry
from gateway.brokers.protocol import BACKLOG_PAGE
from gateway.brokers.single import PUBLISH_SCRIPT, SingleNodeBroker
from gateway.config import Settings
from gateway.cursor import ZERO, StreamId, parse_stream_id
from gateway.errors import BadRequest, RedisUnavailable
from tests.servers import RedisProcess, free_port

MakeBroker = Callable[..., SingleNodeBroker]


@pytest.fixture
async def make_broker(redis_server: RedisProcess) -> AsyncIterator[MakeBroker]:
    """Brokers on the session Redis, each with its own key prefix so changed settings never meet."""
    brokers = []

    def make(url: str = redis_server.url, **changes: object) -> SingleNodeBroker:
        settings = Settings(redis_url=url, key_prefix=f"t{uuid.uuid4().hex[:8]}:").replace(**changes)
        brokers.append(broker := SingleNodeBroker(settings))
        return broker

    yield make
    for broker in brokers:
        await broker.close()


@pytest.fixture
def raw(redis_server: RedisProcess) -> Iterator[redis.Redis]:
    client = redis_server.client()
    yield client
    client.close()


def next_message(pubsub: redis.client.PubSub, kind: str = "message") -> dict:
    for _ in range(50):
        message = pubsub.get_message(timeout=0.2)
        if message is not None and message["type"] == kind:
            return message
    raise AssertionError(f"no {kind} within 10 s")


async def all_pages(broker: SingleNodeBroker, channel: str, after: StreamId) -> list[list]:
    return [page async for page in broker.backlog(channel, after)]


async def test_publish_stores_p_e_d_and_publishes_an_envelope_with_the_same_event(
    make_broker: MakeBroker, raw: redis.Redis, channel: str
) -> None:
    broker = make_broker()
    pubsub = raw.pubsub()
    pubsub.subscribe(broker.naming.pubsub_channel(channel))
    next_message(pubsub, "subscribe")
    data = "line one\nline two ü\u2028"

    stream_id = await broker.publish(channel, data, "tick")

    [(entry_id, fields)] = raw.xrange(broker.naming.stream_key(channel))
    assert entry_id.decode() == stream_id
    assert fields == {b"p": b"", b"e": b"tick", b"d": data.encode()}
    message = next_message(pubsub)
    assert message["data"] == b"\x00sse2\n" + stream_id.encode() + b"\n\ntick\n" + data.encode()  # no previous id
    event = decode_pubsub(channel, message["data"])
    assert (event.stream_id, event.type, event.data) == (parse_stream_id(stream_id), "tick", data)
    pubsub.close()


async def test_publish_without_type_stores_empty_e_and_decodes_to_no_type(
    make_broker: MakeBroker, raw: redis.Redis, channel: str
) -> None:
    broker = make_broker()
    pubsub = raw.pubsub()
    pubsub.subscribe(broker.naming.pubsub_channel(channel))
    next_message(pubsub, "subscribe")
    stream_id = await broker.publish(channel, "")
    assert raw.xrange(broker.naming.stream_key(channel))[0][1] == {b"p": b"", b"e": b"", b"d": b""}
    event = decode_pubsub(channel, next_message(pubsub)["data"])
    assert (event.stream_id, event.type, event.data) == (parse_stream_id(stream_id), None, "")
    pubsub.close()


async def test_each_entry_stores_the_id_of_the_one_before(
    make_broker: MakeBroker, raw: redis.Redis, channel: str
) -> None:
    broker = make_broker()
    ids = [await broker.publish(channel, str(n)) for n in range(5)]
    entries = raw.xrange(broker.naming.stream_key(channel))
    assert [entry_id.decode() for entry_id, _ in entries] == ids
    assert [fields[b"p"].decode() for _, fields in entries] == ["", *ids[:-1]]
    assert from_stream_entry(channel, entries[0]).previous == ZERO
    assert from_stream_entry(channel, entries[3]).previous == parse_stream_id(ids[2])


async def test_maxlen_trims_approximately_in_whole_nodes(
    make_broker: MakeBroker, raw: redis.Redis, channel: str
) -> None:
    broker = make_broker(buffer_maxlen=10, buffer_max_age=0)
    ids = [await broker.publish(channel, str(n)) for n in range(500)]
    key = broker.naming.stream_key(channel)
    length = raw.xlen(key)
    assert 10 <= length <= 200
    assert [entry_id.decode() for entry_id, _ in raw.xrange(key)] == ids[-length:]


async def test_zero_limits_keep_every_entry(make_broker: MakeBroker, raw: redis.Redis, channel: str) -> None:
    broker = make_broker(buffer_maxlen=0, buffer_max_age=0)
    for n in range(250):
        await broker.publish(channel, str(n))
    assert raw.xlen(broker.naming.stream_key(channel)) == 250


async def test_entries_older_than_max_age_are_trimmed_on_the_next_publish(
    make_broker: MakeBroker, raw: redis.Redis, channel: str
) -> None:
    # MINID ~ drops only whole nodes (at most 100 entries each) that are entirely too old: with 250 old entries,
    # at most the 99 sharing a node with the new entry can survive.
    broker = make_broker(buffer_maxlen=0, buffer_max_age=0.2)
    old = [await broker.publish(channel, "old") for _ in range(250)]
    await asyncio.sleep(0.5)
    new = await broker.publish(channel, "new")

    entries = raw.xrange(broker.naming.stream_key(channel))
    kept = [entry_id.decode() for entry_id, _ in entries]
    assert len(kept) <= 100
    assert kept[-1] == new
    assert kept[:-1] == old[len(old) - (len(kept) - 1) :]
    assert entries[0][1][b"p"].decode() not in kept


async def test_publish_reloads_the_script_after_script_flush(
    make_broker: MakeBroker, raw: redis.Redis, channel: str
) -> None:
    broker = make_broker()
    first = await broker.publish(channel, "before")
    raw.script_flush()
    assert raw.script_exists(broker._publish.sha) == [False]
    second = await broker.publish(channel, "after")
    assert parse_stream_id(second) > parse_stream_id(first)
    entries = raw.xrange(broker.naming.stream_key(channel))
    assert [(e[0].decode(), e[1][b"d"], e[1][b"p"].decode()) for e in entries] == [
        (first, b"before", ""),
        (second, b"after", first),
    ]


@pytest.mark.parametrize("event_type", ["a\rb", "a\nb", "a\x00b", "\r", "tick\r\ndata: forged"])
def test_script_refuses_event_type_with_cr_lf_or_nul(raw: redis.Redis, channel: str, event_type: str) -> None:
    key, pubsub_channel = f"raw:{{{channel}}}:buffer", f"raw:{{{channel}}}"
    with pytest.raises(redis.ResponseError, match="event type must not contain CR, LF or NUL"):
        raw.eval(PUBLISH_SCRIPT, 2, key, pubsub_channel, 10, 0, event_type, "data")
    assert raw.exists(key) == 0


async def test_publish_refuses_a_bad_event_type_as_bad_input_not_as_redis_down(
    make_broker: MakeBroker, raw: redis.Redis, channel: str
) -> None:
    # Redis answered: calling this "Redis is unreachable" (503) makes a caller retry a request that cannot succeed.
    broker = make_broker()
    with pytest.raises((BadRequest, ValueError)):
        await broker.publish(channel, "data", "tick\nretry: 1")
    assert raw.xlen(broker.naming.stream_key(channel)) == 0


async def test_backlog_reads_in_pages_strictly_after_the_cursor(
    make_broker: MakeBroker, raw: redis.Redis, channel: str
) -> None:
    broker = make_broker(buffer_maxlen=0)
    ids = [await broker.publish(channel, str(n)) for n in range(BACKLOG_PAGE + 1)]

    pages = await all_pages(broker, channel, ZERO)
    assert [len(page) for page in pages] == [BACKLOG_PAGE, 1]
    read = [event.stream_id for page in pages for event in page]
    assert read == [parse_stream_id(i) for i in ids]
    assert all(a < b for a, b in zip(read, read[1:], strict=False))
    assert pages[1][0].data == str(BACKLOG_PAGE)
    # Each event knows the one before it, across the page boundary too.
    assert [event.previous for page in pages for event in page] == [ZERO, *read[:-1]]

    after = await all_pages(broker, channel, parse_stream_id(ids[9]))
    assert [event.stream_id for page in after for event in page] == [parse_stream_id(i) for i in ids[10:]]
    assert await all_pages(broker, channel, parse_stream_id(ids[-1])) == []


async def test_backlog_of_exactly_one_page_ends_after_it(make_broker: MakeBroker, channel: str) -> None:
    broker = make_broker(buffer_maxlen=0)
    for n in range(BACKLOG_PAGE):
        await broker.publish(channel, str(n))
    assert [len(page) for page in await all_pages(broker, channel, ZERO)] == [BACKLOG_PAGE]


async def test_tail_is_zero_for_an_empty_channel_then_the_newest_id(make_broker: MakeBroker, channel: str) -> None:
    broker = make_broker()
    assert await broker.tail(channel) == ZERO
    assert await all_pages(broker, channel, ZERO) == []
    await broker.publish(channel, "a")
    newest = await broker.publish(channel, "b")
    assert await broker.tail(channel) == parse_stream_id(newest)


async def test_nothing_listening_on_the_port_raises_redis_unavailable(make_broker: MakeBroker, channel: str) -> None:
    broker = make_broker(f"redis://127.0.0.1:{free_port()}/0")
    with pytest.raises(RedisUnavailable, match="the event was not published"):
        await broker.publish(channel, "lost")
    with pytest.raises(RedisUnavailable):
        await broker.tail(channel)
    with pytest.raises(RedisUnavailable):
        await all_pages(broker, channel, ZERO)
    assert await broker.ping() is False


async def test_redis_stopped_after_use_raises_redis_unavailable(make_broker: MakeBroker, channel: str) -> None:
    server = RedisProcess().start()
    try:
        broker = make_broker(server.url)
        await broker.publish(channel, "kept")
        assert await broker.ping() is True
    finally:
        server.stop()
    with pytest.raises(RedisUnavailable) as caught:
        await broker.publish(channel, "lost")
    assert caught.value.code == "redis_unavailable" and caught.value.status_code == 503
