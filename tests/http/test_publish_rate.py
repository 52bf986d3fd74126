"""Limits over real HTTP: open streams per process and publishes per client IP, each with its own answer."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from gateway.errors import TooManyRequests
from gateway.http.publish_rate import PublishRate
from tests.servers import GatewayProcess
from tests.streams import open_stream


@pytest.fixture(scope="module")
def limited_gateway(redis_server) -> Iterator[GatewayProcess]:
    env = {"SSE_GATEWAY_MAX_CONNECTIONS": "3", "SSE_GATEWAY_PUBLISH_RATE": "5", "SSE_GATEWAY_PUBLISH_BURST": "5"}
    process = GatewayProcess(redis_server.url, env=env).start()
    yield process
    process.stop()


async def test_stream_over_the_connection_limit_gets_200_a_long_retry_and_an_immediate_end(limited_gateway, channel):
    url = f"{limited_gateway.url}/events/{channel}"
    contexts = [open_stream(url) for _ in range(3)]
    streams = [await context.__aenter__() for context in contexts]
    try:
        for stream in streams:
            await stream.read_raw_until(b"retry:")
        async with open_stream(url) as refused:
            assert refused.response.status_code == 200  # any other status would stop a browser for good
            assert refused.response.headers["x-sse-refused"] == "max_connections"
            assert await refused.ended(timeout=5)
        assert b"too many connections" in refused.raw
        assert 2000 <= refused.parser.retry <= 4000  # ten times the test gateway's 200 ms, plus jitter
    finally:
        for context in contexts:
            await context.__aexit__(None, None, None)
    async with open_stream(url) as accepted:  # room again once the others left
        await accepted.read_raw_until(b"retry: 200\n")


def test_publishes_over_the_rate_get_429_with_retry_after_and_are_not_stored(limited_gateway, redis_server, channel):
    with httpx.Client(base_url=limited_gateway.url) as client:
        answers = [client.post(f"/publish/{channel}", content=str(i)) for i in range(8)]
    statuses = [a.status_code for a in answers]
    assert statuses[:5] == [201] * 5
    assert 429 in statuses[5:]
    refused = next(a for a in answers if a.status_code == 429)
    assert refused.json()["error"] == "rate_limited"
    assert int(refused.headers["retry-after"]) >= 1
    stored = redis_server.client().xlen(f"sse:{{{channel}}}:buffer")
    assert stored == statuses.count(201)


def test_rate_limit_refills_over_time_and_is_per_client():
    rate = PublishRate(rate=10, burst=2)
    rate.take("a")
    rate.take("a")
    with pytest.raises(TooManyRequests) as caught:
        rate.take("a")
    assert 0 < caught.value.retry_after <= 0.1
    rate.take("b")  # another client has its own bucket
    rate._buckets["a"] = (rate._buckets["a"][0], rate._buckets["a"][1] - 0.2)  # as if 200 ms had passed
    rate.take("a")


def test_rate_zero_means_no_limit():
    rate = PublishRate(rate=0, burst=1)
    for _ in range(1000):
        rate.take("a")
