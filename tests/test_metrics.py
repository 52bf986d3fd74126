"""GET /metrics: Prometheus text that counts what the gateway did, with one worker and with several."""

from __future__ import annotations

import re

import httpx
import pytest

from tests.servers import GatewayProcess
from tests.streams import open_stream, publish


def _value(text: str, name: str, labels: str = "") -> float:
    """A sample's value; 0 when absent (a labelled counter appears on first use)."""
    match = re.search(rf"^{re.escape(name)}{re.escape(labels)} ([0-9.e+]+)$", text, re.MULTILINE)
    return float(match[1]) if match else 0.0


async def test_metrics_count_streams_messages_frames_replays_and_publishes(gateway, channel):
    before = httpx.get(f"{gateway.url}/metrics").text
    first = await publish(gateway.url, channel, "one")
    async with open_stream(f"{gateway.url}/events/{channel}", last_event_id=first) as stream:
        await stream.read_raw_until(b"retry:")
        during = httpx.get(f"{gateway.url}/metrics")
        await publish(gateway.url, channel, "two")
        await stream.next_event()
    after = httpx.get(f"{gateway.url}/metrics").text
    assert during.headers["content-type"].startswith("text/plain")
    assert _value(during.text, "sse_open_streams") >= 1
    assert _value(after, "sse_messages_in_total") >= _value(before, "sse_messages_in_total") + 1
    assert _value(after, "sse_frames_out_total") >= _value(before, "sse_frames_out_total") + 1
    assert _value(after, "sse_replays_total", '{result="hit"}') >= 1
    published = '{outcome="published"}'
    assert _value(after, "sse_publishes_total", published) == _value(before, "sse_publishes_total", published) + 2
    assert _value(after, "sse_publish_seconds_count") >= 2
    assert _value(after, "sse_fanout_lag_seconds_count") >= 1


@pytest.mark.timeout(60)
async def test_metrics_add_up_across_workers(redis_server, channel):
    gateway = GatewayProcess(redis_server.url, "--workers", "2").start()
    try:
        async with httpx.AsyncClient(base_url=gateway.url) as client:
            for i in range(20):  # new connections spread over both workers
                async with httpx.AsyncClient(base_url=gateway.url) as fresh:
                    assert (await fresh.post(f"/publish/{channel}", content=str(i))).status_code == 201
            text = (await client.get("/metrics")).text
        assert _value(text, "sse_publishes_total", '{outcome="published"}') == 20
    finally:
        gateway.stop()
