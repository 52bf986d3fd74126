"""The HTTP contract over a real uvicorn server: publish, streams, headers, and every bad input."""

from __future__ import annotations

import subprocess

import httpx
import pytest
from httpx_sse import aconnect_sse

from tests.streams import open_stream, publish


def test_publish_answers_201_with_channel_and_id(gateway, channel):
    response = httpx.post(f"{gateway.url}/publish/{channel}", content="hello", params={"event": "greeting"})
    assert response.status_code == 201
    body = response.json()
    assert body["channel"] == channel
    assert body["id"].split("-")[0].isdigit()


async def test_stream_sends_headers_first_comment_and_retry_at_once(gateway, channel):
    async with open_stream(f"{gateway.url}/events/{channel}") as stream:
        headers = stream.response.headers
        assert stream.response.status_code == 200
        assert headers["content-type"] == "text/event-stream; charset=utf-8"
        assert headers["cache-control"] == "no-cache"
        assert headers["x-accel-buffering"] == "no"
        assert "content-encoding" not in headers
        raw = await stream.read_raw_until(b"retry: 200\n", timeout=5)
        assert raw.startswith(b": connected\n")


@pytest.mark.parametrize("channels", [["one"], ["one", "two"]])
async def test_a_stream_asked_for_its_start_event_names_its_starting_id_in_an_event_first(gateway, channel, channels):
    names = [f"{channel}-{suffix}" for suffix in channels]
    url = f"{gateway.url}/events"
    async with open_stream(url, channel=names, start_event="1") as stream:
        start = await stream.next_event()
        live = await publish(gateway.url, names[0], "live")
        event = await stream.next_event()
    assert (start.event, start.data) == (":start", "")
    assert start.id and start.id != live  # the position the stream starts from, which a script can resume from
    assert (event.id if len(names) == 1 else event.event, event.data) == (live if len(names) == 1 else names[0], "live")
    async with open_stream(url, channel=names) as stream:
        raw = await stream.read_raw_until(b"\n\n", timeout=5)  # the opening lines, which end in the start's id
    assert b"\nid: " in raw and b"event:" not in raw, "only when asked for"


async def test_stream_sends_heartbeat_comments_when_quiet(gateway, channel):
    async with open_stream(f"{gateway.url}/events/{channel}") as stream:
        # The test gateway beats every second: two beats in a row, after the opening lines.
        raw = await stream.read_raw_until(b": keepalive\n: keepalive\n", timeout=10)
        assert raw.index(b": keepalive\n") > raw.index(b"retry: 200\n")
        # A single comment line, no blank line after it: a client surfaces no empty event for a heartbeat.
        assert b": keepalive\n\n" not in raw
        event_id = await publish(gateway.url, channel, "after the heartbeats")
        event = await stream.next_event()
    assert (event.id, event.data) == (event_id, "after the heartbeats")


async def test_published_event_reaches_subscriber_with_id_type_and_data(gateway, channel):
    async with open_stream(f"{gateway.url}/events/{channel}") as stream:
        await stream.read_raw_until(b"retry:")
        event_id = await publish(gateway.url, channel, "line one\nline two", event="trade")
        event = await stream.next_event()
    assert (event.id, event.event, event.data) == (event_id, "trade", "line one\nline two")


async def test_empty_body_still_dispatches_an_event(gateway, channel):
    async with open_stream(f"{gateway.url}/events/{channel}") as stream:
        await stream.read_raw_until(b"retry:")
        event_id = await publish(gateway.url, channel, "")
        event = await stream.next_event()
    assert (event.id, event.event, event.data) == (event_id, "message", "")


@pytest.mark.parametrize(
    "payload",
    [
        "a\r\nevent: forged\r\ndata: x",
        "a\nid: 999-0\n\ndata: forged",
        "a\rretry: 999999999\r\rdata: forged",
        "nul\x00inside",
        "keep\u2028these\u2029intact\u0085and\x0bthese\x0c",
    ],
)
async def test_injection_in_data_cannot_forge_fields(gateway, channel, payload):
    async with open_stream(f"{gateway.url}/events/{channel}") as stream:
        await stream.read_raw_until(b"retry:")
        event_id = await publish(gateway.url, channel, payload)
        await publish(gateway.url, channel, "next")
        first, second = await stream.take(2)
    expected = payload.replace("\r\n", "\n").replace("\r", "\n")
    assert (first.id, first.event, first.data) == (event_id, "message", expected)
    assert second.data == "next"
    assert stream.parser.retry == 200  # the forged retry line stayed data


@pytest.mark.parametrize("event_type", ["a\rb", "a\nb", "a\r\nb", "a\x00b", "", "x" * 129, "gap", ":start"])
def test_publish_rejects_event_type_that_could_break_framing(gateway, channel, event_type):
    response = httpx.post(f"{gateway.url}/publish/{channel}", content="x", params={"event": event_type})
    assert response.status_code == 400
    assert response.json()["error"] == "bad_event_type"
    assert httpx.get(f"{gateway.url}/healthz").status_code == 200


@pytest.mark.parametrize("name", ["has space", "a/b", "colon:name", "{brace}", "x" * 65, "gap", "ünïcode"])
def test_bad_channel_name_is_400_on_publish_and_subscribe(gateway, name):
    published = httpx.post(f"{gateway.url}/publish/{name}", content="x")
    subscribed = httpx.get(f"{gateway.url}/events", params={"channel": name})
    for response in (published, subscribed):
        assert response.status_code == 400, response.text
        assert response.json()["error"] == "bad_channel"


def test_body_over_limit_is_413_and_nothing_is_stored(gateway, redis_server, channel):
    response = httpx.post(f"{gateway.url}/publish/{channel}", content=b"x" * (1024 * 1024 + 1))
    assert response.status_code == 413
    assert response.json()["error"] == "body_too_large"
    assert redis_server.client().exists(f"sse:{{{channel}}}:buffer") == 0


def test_chunked_body_over_limit_is_413(gateway, channel):
    def chunks():
        for _ in range(17):
            yield b"y" * 65536

    response = httpx.post(f"{gateway.url}/publish/{channel}", content=chunks())
    assert response.status_code == 413


def test_body_that_is_not_utf8_is_400(gateway, channel):
    response = httpx.post(f"{gateway.url}/publish/{channel}", content=b"\xff\xfe")
    assert response.status_code == 400
    assert response.json()["error"] == "bad_body"


def test_too_many_channels_is_400(gateway):
    params = [("channel", f"c{i}") for i in range(17)]
    response = httpx.get(f"{gateway.url}/events", params=params)
    assert response.status_code == 400
    assert response.json()["error"] == "too_many_channels"


def test_no_channel_is_400(gateway):
    response = httpx.get(f"{gateway.url}/events")
    assert response.status_code == 400
    assert response.json()["error"] == "no_channel"


@pytest.mark.parametrize("cursor", ["garbage", "12", "1-2-3", "-1-0", "99999999999999999999999-0"])
def test_last_event_id_that_does_not_parse_is_400(gateway, channel, cursor):
    by_header = httpx.get(f"{gateway.url}/events/{channel}", headers={"Last-Event-ID": cursor})
    by_query = httpx.get(f"{gateway.url}/events/{channel}", params={"lastEventId": cursor})
    for response in (by_header, by_query):
        assert response.status_code == 400
        assert response.json()["error"] == "bad_cursor"


def test_unknown_route_is_404_and_wrong_method_is_405_with_json(gateway, channel):
    missing = httpx.get(f"{gateway.url}/nowhere")
    wrong = httpx.get(f"{gateway.url}/publish/{channel}")
    assert (missing.status_code, missing.json()["error"]) == (404, "not_found")
    assert (wrong.status_code, wrong.json()["error"]) == (405, "method_not_allowed")


def test_health_and_readiness_answer_while_redis_is_up(gateway):
    assert httpx.get(f"{gateway.url}/healthz").json() == {"status": "ok"}
    assert httpx.get(f"{gateway.url}/readyz").json() == {"status": "ready"}


def test_curl_prints_each_event_as_it_is_published(gateway, channel):
    curl = subprocess.Popen(
        ["curl", "-sN", "--max-time", "20", f"{gateway.url}/events/{channel}"], stdout=subprocess.PIPE, text=True
    )
    try:
        assert curl.stdout.readline() == ": connected\n"
        event_id = httpx.post(f"{gateway.url}/publish/{channel}", content="for curl").json()["id"]
        lines = [curl.stdout.readline() for _ in range(4)]
        while lines[0] != f"id: {event_id}\n":  # skip the retry hint and any heartbeat
            lines = lines[1:] + [curl.stdout.readline()]
        assert lines[:3] == [f"id: {event_id}\n", "data: for curl\n", "\n"]
    finally:
        curl.kill()
        curl.wait()


async def test_httpx_sse_reads_events_and_resumes_with_last_event_id(gateway, channel):
    first = await publish(gateway.url, channel, "one")
    second = await publish(gateway.url, channel, "two")
    async with (
        httpx.AsyncClient(timeout=10) as client,
        aconnect_sse(client, "GET", f"{gateway.url}/events/{channel}", headers={"Last-Event-ID": first}) as source,
    ):
        assert source.response.headers["content-type"].startswith("text/event-stream")
        resumed = None
        async for event in source.aiter_sse():
            if event.data:  # httpx-sse may surface the retry hint as an empty event
                resumed = (event.id, event.data)
                break
    assert resumed == (second, "two"), "the stream ended without the event after the Last-Event-ID"
