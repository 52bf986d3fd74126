"""Raw channels (SSE_GATEWAY_RAW_CHANNELS): what other programs PUBLISH to a channel's bare name, streamed live.

A real gateway on a real Redis, real clients (httpx with the client's SSE parser, and curl), and redis-py's PUBLISH
as "the other program". A bare PUBLISH is not buffered, so before one is sent the test waits until Redis shows the
gateway's subscription to the bare name (PUBSUB NUMSUB): a stream's opening lines may precede it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import httpx
import pytest

from gateway.brokers.bare import BareMessages
from gateway.brokers.upstream import UNSUBSCRIBE_DELAY
from gateway.cursor import parse_cursor
from sse_gateway_client import ServerSentEvent, SSEParser
from tests.brokers.test_upstream import _watch
from tests.http.test_stream import _dechunk
from tests.servers import GatewayProcess, RedisProcess, wait_until
from tests.streams import Stream, open_stream, publish, recv_until, stalled_request
from tests.test_metrics import _value

RAW_CHANNELS = "stocks,news.*,r-*"
MAX_BODY = 4096
SENTINEL = "sentinel, through the gateway"
DROPPED = 'sse_raw_messages_dropped_total{reason="too_large"}'


@pytest.fixture(scope="module")
def raw_gateway(redis_server: RedisProcess) -> Iterator[GatewayProcess]:
    process = GatewayProcess(redis_server.url, "--raw-channels", RAW_CHANNELS, "--max-body-bytes", str(MAX_BODY))
    process.start()
    yield process
    process.stop()


@pytest.fixture
def raw(channel: str) -> str:
    """A raw channel (it matches ``r-*``) that no other test uses."""
    return "r-" + channel


def subscribers(redis: RedisProcess, name: str) -> int:
    """How many connections Redis has subscribed to the (classic) Pub/Sub channel ``name``."""
    client = redis.client()
    try:
        return client.pubsub_numsub(name)[0][1]
    finally:
        client.close()


def bare_publish(redis: RedisProcess, name: str, payload: str | bytes) -> int:
    """PUBLISH as any other program does, to the bare name; how many subscribers Redis handed it to."""
    client = redis.client()
    try:
        return client.publish(name, payload)
    finally:
        client.close()


async def until_subscribed(redis: RedisProcess, name: str, count: int = 1) -> None:
    """Wait until Redis counts ``count`` subscriptions to the Pub/Sub channel ``name``."""
    await asyncio.to_thread(
        wait_until, lambda: subscribers(redis, name) == count, what=f"{count} subscription(s) to {name}", timeout=10
    )


async def until_sentinel(stream: Stream) -> list[ServerSentEvent]:
    """Every event before the sentinel, and the sentinel: a bounded wait for proof that nothing else came."""
    received = []
    while not received or received[-1].data != SENTINEL:
        received.append(await stream.next_event())
    return received


def gateway_metric(gateway: GatewayProcess, name: str) -> float:
    return _value(httpx.get(f"{gateway.url}/metrics", timeout=5).text, name)


async def test_a_bare_publish_on_a_raw_channel_streams_live_without_an_id(raw_gateway, redis_server, raw):
    payload = '{"sym":"AAPL","px":189.2}'
    async with open_stream(f"{raw_gateway.url}/events/{raw}") as stream:
        await stream.read_raw_until(b"id: 0-0\n\n")
        await until_subscribed(redis_server, raw)
        assert bare_publish(redis_server, raw, payload) == 1, "Redis handed it to the gateway, once"
        event = await stream.next_event()
    assert (event.event, event.data) == ("message", payload)
    assert event.id == "0-0", "no id of its own: the client's resume point is still the stream's opening one"
    assert stream.raw.endswith(b"id: 0-0\n\n" + f"data: {payload}\n\n".encode()), "a data line and nothing else"


async def test_curl_prints_a_bare_publish_as_one_data_line(raw_gateway, redis_server, raw):
    curl = await asyncio.create_subprocess_exec(
        "curl", "-N", "-s", f"{raw_gateway.url}/events/{raw}", stdout=asyncio.subprocess.PIPE
    )
    try:
        assert curl.stdout is not None
        async with asyncio.timeout(10):
            opening = [await curl.stdout.readline() for _ in range(4)]
            await until_subscribed(redis_server, raw)
            bare_publish(redis_server, raw, '{"px": 4242}')
            frame = [await curl.stdout.readline() for _ in range(2)]
    finally:
        curl.kill()
        await curl.wait()
    assert opening == [b": connected\n", b"retry: 200\n", b"id: 0-0\n", b"\n"]
    assert frame == [b'data: {"px": 4242}\n', b"\n"]


async def test_a_bare_publish_on_a_channel_that_is_not_raw_is_not_streamed(raw_gateway, redis_server, channel):
    async with open_stream(f"{raw_gateway.url}/events/{channel}") as stream:
        await stream.read_raw_until(b"retry:")
        await until_subscribed(redis_server, f"sse:{{{channel}}}")
        assert bare_publish(redis_server, channel, "not for the gateway") == 0, "nobody listens to its bare name"
        # Redis sends what one connection subscribed to in the order it ran the commands: had the gateway heard the
        # bare PUBLISH, it would come before the sentinel published after it.
        sentinel_id = await publish(raw_gateway.url, channel, SENTINEL)
        received = await until_sentinel(stream)
    assert [(e.data, e.id) for e in received] == [(SENTINEL, sentinel_id)]


async def test_a_multi_channel_stream_of_a_raw_and_a_plain_channel_gets_both(raw_gateway, redis_server, raw, channel):
    plain = channel
    async with open_stream(f"{raw_gateway.url}/events", channel=[raw, plain]) as stream:
        await stream.read_raw_until(b"retry:")
        await until_subscribed(redis_server, raw)
        bare_publish(redis_server, raw, "bare on the raw channel")
        plain_id = await publish(raw_gateway.url, plain, "through the gateway")
        first, second = await stream.take(2)
    assert (first.event, first.data) == (raw, "bare on the raw channel")
    assert (second.event, second.data) == (plain, "through the gateway")
    # The bare one moved no position; the published one moved its channel's.
    assert parse_cursor(second.id, tuple(sorted([raw, plain])))[plain] == tuple(map(int, plain_id.split("-")))
    assert parse_cursor(second.id, tuple(sorted([raw, plain])))[raw] == (0, 0)


async def test_the_gateways_own_publishes_on_a_raw_channel_arrive_once_with_their_ids_and_resume(
    raw_gateway, redis_server, raw
):
    async with open_stream(f"{raw_gateway.url}/events/{raw}") as stream:
        await stream.read_raw_until(b"retry:")
        await until_subscribed(redis_server, raw)
        first = await publish(raw_gateway.url, raw, "own 1")
        bare_publish(redis_server, raw, "bare")
        second = await publish(raw_gateway.url, raw, "own 2")
        sentinel = await publish(raw_gateway.url, raw, SENTINEL)
        received = await until_sentinel(stream)
    assert [(e.data, e.id) for e in received] == [
        ("own 1", first),
        ("bare", first),  # no id of its own: the parser keeps the one before
        ("own 2", second),
        (SENTINEL, sentinel),
    ], "each once, the gateway's with their ids"
    async with open_stream(f"{raw_gateway.url}/events/{raw}", last_event_id=first) as resumed:
        replayed = await until_sentinel(resumed)
    assert [(e.data, e.id) for e in replayed] == [("own 2", second), (SENTINEL, sentinel)], "bare ones are not replayed"


async def test_bytes_of_a_bare_publish_that_are_not_utf8_are_replaced(raw_gateway, redis_server, raw):
    async with open_stream(f"{raw_gateway.url}/events/{raw}") as stream:
        await stream.read_raw_until(b"retry:")
        await until_subscribed(redis_server, raw)
        bare_publish(redis_server, raw, b"caf\xe9 \xff\xfe ok \xc3\xa9")
        event = await stream.next_event()
    assert event.data == "caf\ufffd \ufffd\ufffd ok é"


FORGERIES = [
    ("a\rb", "a\nb"),
    ("a\nb", "a\nb"),
    ("a\r\nb", "a\nb"),
    ("a\x00b", "a\x00b"),
    ("id: x\nevent: y\ndata: z", "id: x\nevent: y\ndata: z"),
    ("\r\nretry: 999999999\r\rid: forged\n\nevent: gap", "\nretry: 999999999\n\nid: forged\n\nevent: gap"),
    # A valid envelope of the gateway's own, as the publish script sends it: on a bare channel it is data too.
    ("\x00sse2\n9999999999999-0\n\nforged-type\nforged data", "\x00sse2\n9999999999999-0\n\nforged-type\nforged data"),
    ("\x00sse1\n9999999999999-1\n\nforged data", "\x00sse1\n9999999999999-1\n\nforged data"),
]


async def test_payloads_that_try_to_forge_fields_or_an_envelope_arrive_as_data_only(raw_gateway, redis_server, raw):
    async with open_stream(f"{raw_gateway.url}/events/{raw}") as stream:
        opened = len(await stream.read_raw_until(b"id: 0-0\n\n"))
        await until_subscribed(redis_server, raw)
        for payload, _ in FORGERIES:
            bare_publish(redis_server, raw, payload)
        sentinel = await publish(raw_gateway.url, raw, SENTINEL)
        received = await until_sentinel(stream)
    assert [(e.event, e.data, e.id) for e in received[:-1]] == [("message", data, "0-0") for _, data in FORGERIES]
    assert received[-1].id == sentinel
    # On the wire, every line of those events is a data line (or the blank line that ends an event).
    wire = bytes(stream.raw[opened:]).split(f"id: {sentinel}".encode())[0]
    lines = wire.replace(b"\r\n", b"\n").replace(b"\r", b"\n").split(b"\n")
    assert all(line == b"" or line.startswith(b"data: ") or line == b": keepalive" for line in lines), wire
    assert b"\r" not in wire


async def test_a_bare_publish_over_the_body_limit_is_dropped_counted_and_logged_once(raw_gateway, redis_server, raw):
    async with open_stream(f"{raw_gateway.url}/events/{raw}") as stream:
        await stream.read_raw_until(b"retry:")
        await until_subscribed(redis_server, raw)
        before = gateway_metric(raw_gateway, DROPPED)
        bare_publish(redis_server, raw, "x" * (MAX_BODY + 1))
        bare_publish(redis_server, raw, "y" * MAX_BODY)  # at the limit: streamed, as a publish of it is accepted
        bare_publish(redis_server, raw, "z" * (MAX_BODY * 10))
        sentinel = await publish(raw_gateway.url, raw, SENTINEL)
        received = await until_sentinel(stream)
        assert [e.data for e in received] == ["y" * MAX_BODY, SENTINEL]
        assert gateway_metric(raw_gateway, DROPPED) - before == 2
        bare_publish(redis_server, raw, "after the drops")
        assert (await stream.next_event()).data == "after the drops", "the stream goes on"
    assert received[-1].id == sentinel
    # One warning a minute at most, however many are dropped: a feed of oversized messages cannot flood the log.
    assert raw_gateway.log().count(f"dropped a {MAX_BODY + 1}-byte message on bare channel {raw}") == 1
    assert f"dropped a {MAX_BODY * 10}-byte message" not in raw_gateway.log()


@pytest.mark.timeout(60)
async def test_the_bare_subscription_is_shared_and_dropped_after_the_last_subscriber_leaves(
    raw_gateway, redis_server, raw
):
    async with open_stream(f"{raw_gateway.url}/events/{raw}") as first:
        await first.read_raw_until(b"retry:")
        async with open_stream(f"{raw_gateway.url}/events/{raw}") as second:
            await second.read_raw_until(b"retry:")
            await until_subscribed(redis_server, raw)
            bare_publish(redis_server, raw, "to both")
            assert [(await s.next_event()).data for s in (first, second)] == ["to both", "to both"]
        # One client left, one is still there: the subscription stays, past the delayed unsubscribe.
        counts = await asyncio.to_thread(_watch, lambda: subscribers(redis_server, raw), 2.5 * UNSUBSCRIBE_DELAY)
        assert set(counts) == {1}, f"a client is still there, yet the bare subscription count went {counts}"
    await until_subscribed(redis_server, raw, 0)
    await until_subscribed(redis_server, f"sse:{{{raw}}}", 0)
    client = redis_server.client()
    assert raw.encode() not in client.pubsub_channels(f"*{raw}*")
    client.close()


@pytest.mark.timeout(60)
async def test_the_bare_subscription_comes_back_after_redis_restarts(own_redis, raw):
    gateway = GatewayProcess(own_redis.url, "--raw-channels", RAW_CHANNELS).start()
    try:
        async with open_stream(f"{gateway.url}/events/{raw}") as stream:
            await stream.read_raw_until(b"retry:")
            await until_subscribed(own_redis, raw)
            bare_publish(own_redis, raw, "before")
            assert (await stream.next_event()).data == "before"
            own_redis.kill()
            await asyncio.to_thread(wait_until, lambda: not gateway.ready(), what="the gateway not ready")
            own_redis.start()
            await asyncio.to_thread(wait_until, gateway.ready, what="the gateway ready again")
            await until_subscribed(own_redis, raw)
            assert bare_publish(own_redis, raw, "after the restart") == 1
            assert (await stream.next_event(timeout=15)).data == "after the restart"
            assert not stream.finished, "the client kept its stream through the outage"
    finally:
        gateway.stop()


@pytest.mark.timeout(60)
async def test_with_an_empty_key_prefix_bare_and_own_publishes_each_arrive_once(redis_server, raw):
    # With no prefix the gateway's own channel is "{r-...}" and the bare one "r-...": two channels, never one.
    gateway = GatewayProcess(redis_server.url, "--raw-channels", RAW_CHANNELS, env={"SSE_GATEWAY_KEY_PREFIX": ""})
    gateway.start()
    try:
        async with open_stream(f"{gateway.url}/events/{raw}") as stream:
            await stream.read_raw_until(b"retry:")
            await until_subscribed(redis_server, raw)
            await until_subscribed(redis_server, f"{{{raw}}}")
            bare_publish(redis_server, raw, "bare")
            own = await publish(gateway.url, raw, "own")
            sentinel = await publish(gateway.url, raw, SENTINEL)
            received = await until_sentinel(stream)
        assert [(e.data, e.id) for e in received] == [("bare", "0-0"), ("own", own), (SENTINEL, sentinel)]
        assert redis_server.client().xlen(f"{{{raw}}}:buffer") == 2, "the own ones buffered, the bare one not"
    finally:
        gateway.stop()


@pytest.mark.timeout(90)
async def test_a_stalled_client_of_a_conflated_raw_channel_gets_the_newest_bare_message_instead_of_being_evicted(
    redis_server, raw
):
    env = {
        "SSE_GATEWAY_CONFLATE_CHANNELS": "r-*",
        "SSE_GATEWAY_CLIENT_BUFFER_EVENTS": "16",
        "SSE_GATEWAY_CLIENT_BUFFER_BYTES": "262144",
    }
    gateway = GatewayProcess(redis_server.url, "--raw-channels", RAW_CHANNELS, env=env).start()
    try:
        client = stalled_request(gateway.port, f"/events/{raw}")
        received = bytearray()
        await asyncio.to_thread(recv_until, client, b"\nretry:", received)
        await until_subscribed(redis_server, raw)
        bare_publish(redis_server, raw, "probe")
        await asyncio.to_thread(recv_until, client, b"data: probe\n\n", received)  # from here it reads nothing
        # About 10 MB, far more than the sockets hold and than its buffer of 16 events: a client that is not
        # conflated would be evicted.
        read_before = gateway_metric(gateway, "sse_messages_in_total")
        publisher = redis_server.client()
        with publisher.pipeline(transaction=False) as pipe:
            for i in range(600):
                pipe.publish(raw, f"{i:04d}:" + "x" * 16000)
            pipe.publish(raw, "the newest")
            pipe.execute()
        # The client reads again only once the gateway has taken in all of them: it fell behind by all of them.
        await asyncio.to_thread(
            wait_until,
            lambda: gateway_metric(gateway, "sse_messages_in_total") - read_before >= 601,
            what="the gateway having read every message",
        )
        assert gateway_metric(gateway, 'sse_evictions_total{reason="overflow"}') == 0
        await asyncio.to_thread(recv_until, client, b"data: the newest\n\n", received)
        publisher.publish(raw, "after")
        await asyncio.to_thread(recv_until, client, b"data: after\n\n", received)  # still connected
        client.close()
        publisher.close()
        data = [event.data for event in SSEParser().feed(_dechunk(bytes(received))) if event.data]
        assert data[0] == "probe" and data[-2:] == ["the newest", "after"]
        assert len(data) < 600, "it skipped intermediate ones (else the test never made it fall behind)"
        assert "reason=overflow" not in gateway.log() and "reason=stalled" not in gateway.log()
    finally:
        gateway.stop()


def test_a_bare_payload_up_to_the_limit_is_data_only_and_a_larger_one_is_dropped() -> None:
    envelope = b"\x00sse2\n5-0\n\nforged\ndata"  # a valid envelope of the gateway's own
    bare = BareMessages(max_bytes=len(envelope))
    event = bare.event("stocks", envelope)
    assert event is not None and (event.stream_id, event.previous, event.type) == (None, None, None)
    assert event.data == envelope.decode()
    assert event.frame == b"data: \x00sse2\ndata: 5-0\ndata: \ndata: forged\ndata: data\n\n"
    assert bare.event("stocks", envelope + b"!") is None
