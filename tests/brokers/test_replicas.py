"""SSE_GATEWAY_PUBLISH_REPLICAS: a publish is acknowledged and sent live only once that many replicas hold it."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from gateway.brokers import broker_for
from gateway.brokers.envelope import encode_pubsub
from gateway.brokers.single import PUBLISH_SCRIPT
from gateway.config import Settings
from gateway.cursor import parse_stream_id
from gateway.errors import RedisUnavailable
from tests.brokers.test_contract import Recorder
from tests.servers import GatewayProcess, RedisProcess
from tests.streams import open_stream


@pytest.fixture(scope="module")
def primary_and_replica() -> Iterator[tuple[RedisProcess, RedisProcess]]:
    primary = RedisProcess().start()
    replica = RedisProcess(replica_of=primary).start()
    yield primary, replica
    replica.stop()
    primary.stop()


async def test_with_one_replica_asked_for_the_replica_holds_the_event_when_the_publish_returns(primary_and_replica):
    primary, replica = primary_and_replica
    channel = "r-" + uuid.uuid4().hex[:8]
    broker = broker_for(Settings(redis_url=primary.url, publish_replicas=1))
    recorder = Recorder()
    await broker.start(recorder.on_event, recorder.on_catch_up)
    try:
        await broker.subscribe(channel).wait()
        for n in range(20):
            event_id = await broker.publish(channel, f"{n}", "tick")
            # WAIT returned: the replica has the entry now, not some time later.
            assert [e.decode() for e, _ in replica.client().xrange(f"sse:{{{channel}}}:buffer")][-1] == event_id
        assert replica.client().pttl(f"sse:{{{channel}}}:buffer") > 0, "the expiry is written (and replicated) too"
        await recorder.wait_for(lambda: len(recorder.events) == 20, "every event live")
        assert [(e.data, e.type) for e in recorder.events] == [(f"{n}", "tick") for n in range(20)]
        assert [e.previous for e in recorder.events[1:]] == [e.stream_id for e in recorder.events[:-1]]
        # Live messages may overtake each other here, so the first one after the subscription is checked against
        # the buffer, up to itself; the rest followed each other.
        assert recorder.catch_ups == [channel]
        assert recorder.catch_up_bounds == [recorder.events[0].stream_id]
    finally:
        await broker.close()


async def test_too_few_replicas_is_a_503_not_replicated_and_the_event_is_not_sent_live(primary_and_replica):
    primary, _ = primary_and_replica
    channel = "r-" + uuid.uuid4().hex[:8]
    broker = broker_for(Settings(redis_url=primary.url, publish_replicas=2, publish_replicas_timeout=0.2))
    plain = broker_for(Settings(redis_url=primary.url))
    recorder = Recorder()
    await broker.start(recorder.on_event, recorder.on_catch_up)
    try:
        await broker.subscribe(channel).wait()
        await plain.publish(channel, "first")
        await recorder.wait_for(lambda: len(recorder.events) == 1, "the first event")
        with pytest.raises(RedisUnavailable) as refused:
            await broker.publish(channel, "unreplicated")
        assert refused.value.code == "not_replicated" and refused.value.status_code == 503
        assert "only 1 of 2 replicas" in refused.value.detail
        # A later event, published without waiting, names the unreplicated one as its previous: the broker sees
        # the hole and asks for a catch-up from the buffer, where the entry stayed.
        sentinel = await plain.publish(channel, "sentinel")
        await recorder.wait_for(lambda: len(recorder.events) == 2, "the sentinel")
        assert [e.data for e in recorder.events] == ["first", "sentinel"], "the unreplicated event was not sent live"
        assert recorder.catch_ups == [channel, channel]  # the first event after the subscription, and the hole
        assert recorder.catch_up_bounds[-1] == parse_stream_id(sentinel)
        assert recorder.events[0].stream_id < recorder.events[1].previous < parse_stream_id(sentinel)
    finally:
        await broker.close()
        await plain.close()


async def test_live_messages_that_overtake_each_other_reach_the_client_once_in_order_and_none_early(
    primary_and_replica,
):
    # With replicas, each publish sends its envelope live only after its WAIT, so a later event's envelope can arrive
    # first, even as the first one heard after the subscription. Such an envelope is a doorbell for the events before
    # it; the buffer is read up to it and no further, since a newer entry's publish may still be waiting.
    primary, _ = primary_and_replica
    channel = "r-" + uuid.uuid4().hex[:8]
    raw = primary.client()
    keys = [f"sse:{{{channel}}}:buffer", f"sse:{{{channel}}}"]

    def written_not_sent(data: str) -> tuple[bytes, bytes]:
        stream_id, previous = raw.eval(PUBLISH_SCRIPT, 2, *keys, 1000, 0, "", data, 0, "LATER")
        return stream_id, previous

    gateway = GatewayProcess(primary.url, env={"SSE_GATEWAY_PUBLISH_REPLICAS": "1"}).start()
    try:
        async with open_stream(f"{gateway.url}/events/{channel}") as stream:
            await stream.read_raw_until(b"retry:")
            raw.publish(keys[1], "live now")  # a plain message, no id: once it arrives the stream is live
            assert (await stream.next_event()).data == "live now"
            (a_id, a_prev), (b_id, b_prev), (c_id, c_prev) = [written_not_sent(d) for d in ("a", "b", "c")]
            raw.publish(keys[1], encode_pubsub(b_id, b_prev, None, "b"))  # b overtakes a; c is still "waiting"
            raw.publish(keys[1], "marker")
            events = await stream.take(3)
            assert [e.data for e in events] == ["a", "b", "marker"]  # c is not delivered before its publish ended
            assert [e.id for e in events[:2]] == [a_id.decode(), b_id.decode()]
            raw.publish(keys[1], encode_pubsub(a_id, a_prev, None, "a"))  # late: already delivered
            raw.publish(keys[1], encode_pubsub(c_id, c_prev, None, "c"))
            raw.publish(keys[1], "end")
            events = await stream.take(2)
            assert [e.data for e in events] == ["c", "end"]  # a not again
            assert events[0].id == c_id.decode()
    finally:
        gateway.stop()


def test_a_replicas_timeout_past_the_redis_socket_timeout_is_refused():
    with pytest.raises(ValueError, match="publish_replicas_timeout must be at most 4 seconds"):
        Settings(publish_replicas=1, publish_replicas_timeout=5)


def test_negative_publish_replicas_is_refused():
    with pytest.raises(ValueError, match="publish_replicas must not be negative"):
        Settings(publish_replicas=-1)


async def test_a_batch_with_replicas_is_acknowledged_and_sent_live_only_once_the_replica_has_it(primary_and_replica):
    primary, replica = primary_and_replica
    channel = "r-" + uuid.uuid4().hex[:8]
    broker = broker_for(Settings(redis_url=primary.url, publish_replicas=1))
    short = broker_for(Settings(redis_url=primary.url, publish_replicas=2, publish_replicas_timeout=0.2))
    recorder = Recorder()
    await broker.start(recorder.on_event, recorder.on_catch_up)
    try:
        await broker.subscribe(channel).wait()
        outcomes = await broker.publish_many([(channel, f"{n}", None) for n in range(50)])
        held = [e.decode() for e, _ in replica.client().xrange(f"sse:{{{channel}}}:buffer")]
        assert outcomes == held, "every id acknowledged is on the replica already"
        await recorder.wait_for(lambda: len(recorder.events) == 50, "the batch live")
        refused = await short.publish_many([(channel, f"late {n}", None) for n in range(5)])
        assert all(isinstance(o, RedisUnavailable) and o.code == "not_replicated" for o in refused), refused
        sentinel = await broker.publish(channel, "sentinel")
        await recorder.wait_for(lambda: recorder.events[-1].data == "sentinel", "the sentinel")
        assert not [e for e in recorder.events if e.data.startswith("late")], "nothing unreplicated was sent live"
        # The sentinel names the last of them as its previous: the hub is asked to read them from the buffer.
        assert recorder.catch_up_bounds[-1] == parse_stream_id(sentinel)
    finally:
        await broker.close()
        await short.close()
