"""SSE_GATEWAY_PUBLISH_REPLICAS: a publish is acknowledged and sent live only once that many replicas hold it."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from gateway.brokers import broker_for
from gateway.config import Settings
from gateway.cursor import parse_stream_id
from gateway.errors import RedisUnavailable
from tests.brokers.test_contract import Recorder
from tests.servers import RedisProcess


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
        await recorder.wait_for(lambda: len(recorder.events) == 20, "every event live")
        assert [(e.data, e.type) for e in recorder.events] == [(f"{n}", "tick") for n in range(20)]
        assert [e.previous for e in recorder.events[1:]] == [e.stream_id for e in recorder.events[:-1]]
        assert recorder.catch_ups == []
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
        assert recorder.catch_ups == [channel]
        assert recorder.events[0].stream_id < recorder.events[1].previous < parse_stream_id(sentinel)
    finally:
        await broker.close()
        await plain.close()


def test_negative_publish_replicas_is_refused():
    with pytest.raises(ValueError, match="publish_replicas must not be negative"):
        Settings(publish_replicas=-1)
