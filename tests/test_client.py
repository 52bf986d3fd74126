"""The Python client against a real gateway: publish, and a subscription that survives a gateway restart."""

from __future__ import annotations

import os
import queue
import subprocess
import sys
import threading

import pytest

from sse_gateway_client import GatewayHTTPError, Subscription, publish, publish_many
from tests.servers import GatewayProcess, wait_until


def _consume(subscription: Subscription, into: queue.Queue) -> threading.Thread:
    def run() -> None:
        try:
            for event in subscription:
                into.put(event)
        except Exception as exc:  # noqa: BLE001 - handed to the test thread
            into.put(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def _next(events: queue.Queue, timeout: float = 10.0):
    item = events.get(timeout=timeout)
    if isinstance(item, Exception):
        raise item
    return item


def test_publish_returns_the_id_and_rejects_bad_input_with_the_json_error(gateway, channel):
    result = publish(channel, "hello", event="greeting", base_url=gateway.url)
    assert result["channel"] == channel and result["id"].count("-") == 1
    with pytest.raises(GatewayHTTPError) as caught:
        publish(channel, "x", event="bad\nline", base_url=gateway.url)
    assert (caught.value.status_code, caught.value.body["error"]) == (400, "bad_event_type")


@pytest.mark.timeout(60)
def test_subscription_resumes_through_a_gateway_restart_with_last_event_id(redis_server, channel):
    gateway = GatewayProcess(redis_server.url).start()
    events: queue.Queue = queue.Queue()
    subscription = Subscription(channel, base_url=gateway.url, read_timeout=5)
    try:
        _consume(subscription, events)
        wait_until(lambda: redis_server.subscriptions(channel) == 1, what="the subscription")
        before = [publish(channel, f"before {i}", base_url=gateway.url)["id"] for i in range(3)]
        assert [_next(events).id for _ in range(3)] == before
        assert subscription.retry_ms == 200  # the test gateway's retry hint, honoured for the reconnect wait

        gateway.kill()
        # Published while the gateway is down: only a resume from Last-Event-ID can deliver these.
        missed = [redis_server.publish_with_script(channel, f"missed {i}") for i in range(3)]
        gateway.start()
        after = publish(channel, "after", base_url=gateway.url)["id"]

        received = [_next(events) for _ in range(4)]
        assert [e.id for e in received] == [*missed, after]
        assert [e.data for e in received] == ["missed 0", "missed 1", "missed 2", "after"]
        assert subscription.reconnects >= 1
        # Per-channel order: anything delivered twice would arrive before this one.
        last = publish(channel, "last", base_url=gateway.url)["id"]
        assert _next(events).id == last, "nothing twice"
    finally:
        subscription.close()
        gateway.stop()


def test_subscription_to_a_bad_channel_raises_without_retrying(gateway):
    subscription = Subscription("bad name", base_url=gateway.url)
    with pytest.raises(GatewayHTTPError) as caught:
        next(iter(subscription))
    assert caught.value.status_code == 400
    assert subscription.reconnects == 0


def test_client_command_finds_the_gateway_through_sse_gateway_url_and_prints_one_compact_line(
    gateway, redis_server, channel
):
    env = {**os.environ, "SSE_GATEWAY_URL": gateway.url, "SSE_GATEWAY_TOKEN": "", "SSE_GATEWAY_API_KEY": ""}
    result = subprocess.run(
        [sys.executable, "-m", "sse_gateway_client", "publish", channel, "-"],
        input=b"from stdin\n",
        capture_output=True,
        timeout=30,
        env=env,
    )
    assert result.returncode == 0, result.stderr
    ((entry_id, entry),) = redis_server.client().xrange(f"sse:{{{channel}}}:buffer")
    assert entry[b"d"] == b"from stdin"
    assert result.stdout == f'{{"channel":"{channel}","id":"{entry_id.decode()}"}}\n'.encode()


def test_publish_many_returns_one_result_per_event_and_raises_only_for_a_batch_refused_whole(gateway, channel):
    answer = publish_many(
        [{"channel": channel, "data": "a"}, {"channel": "no spaces", "data": "b"}, {"channel": channel, "data": "c"}],
        base_url=gateway.url,
    )
    assert (answer["published"], answer["failed"]) == (2, 1)
    assert [r.get("error") for r in answer["results"]] == [None, "bad_channel", None]
    with pytest.raises(GatewayHTTPError) as refused:
        publish_many([], base_url=gateway.url)
    assert refused.value.status_code == 400 and refused.value.body["error"] == "empty_batch"
