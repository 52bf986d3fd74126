"""POST /publish: a batch of NDJSON events against a real gateway, each line checked and answered on its own."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator

import httpx
import pytest

from tests.auth_setup import AUDIENCE, SECRET, claims, hs256
from tests.servers import GatewayProcess, RedisProcess
from tests.streams import open_stream


def ndjson(*items: object) -> bytes:
    return b"".join(json.dumps(item).encode() + b"\n" for item in items)


@pytest.fixture
def names() -> list[str]:
    base = "bt-" + uuid.uuid4().hex[:8]
    return [f"{base}-{n}" for n in range(3)]


async def test_a_batch_is_published_in_order_and_each_line_answered_with_its_id(gateway, redis_server, names):
    a, b, _ = names
    items = [
        {"channel": a if n % 2 else b, "data": f"event {n}", **({"event": "tick"} if n % 3 == 0 else {})}
        for n in range(30)
    ]
    async with open_stream(f"{gateway.url}/events/{a}") as stream:
        await stream.read_raw_until(b"retry:")
        response = httpx.post(f"{gateway.url}/publish", content=ndjson(*items), timeout=10)
        assert response.status_code == 201, response.text
        answer = response.json()
        events = await stream.take(15)
    assert (answer["published"], answer["failed"]) == (30, 0)
    assert [r["line"] for r in answer["results"]] == list(range(1, 31))
    mine = [(r["id"], i) for r, i in zip(answer["results"], items, strict=True) if i["channel"] == a]
    assert [(e.id, e.data, e.event) for e in events] == [
        (event_id, item["data"], item.get("event", "message")) for event_id, item in mine
    ], "live, in the order of their lines, under the ids the answer gave"
    for channel in (a, b):
        stored = [(e.decode(), f[b"d"].decode()) for e, f in redis_server.client().xrange(f"sse:{{{channel}}}:buffer")]
        assert stored == [
            (r["id"], i["data"]) for r, i in zip(answer["results"], items, strict=True) if i["channel"] == channel
        ]


def test_bad_lines_are_reported_by_number_and_the_good_ones_published(gateway, redis_server, names):
    a = names[0]
    body = (
        ndjson({"channel": a, "data": "first"})
        + b"not json\n"
        + ndjson(
            {"channel": "bad channel", "data": "x"},
            {"channel": a, "data": 5},
            {"channel": a, "data": "x", "event": "gap"},
        )
        + b"\n"  # blank lines are skipped, and keep the numbering of the others
        + ndjson({"channel": a, "data": "last"}, [1, 2])
    )
    response = httpx.post(f"{gateway.url}/publish", content=body, timeout=10)
    assert response.status_code == 207, response.text
    answer = response.json()
    assert (answer["published"], answer["failed"]) == (2, 5)
    errors = {r["line"]: r["error"] for r in answer["results"] if "error" in r}
    assert errors == {2: "bad_line", 3: "bad_channel", 4: "bad_line", 5: "bad_event_type", 8: "bad_line"}
    assert [r["line"] for r in answer["results"] if "id" in r] == [1, 7]
    stored = [f[b"d"].decode() for _, f in redis_server.client().xrange(f"sse:{{{a}}}:buffer")]
    assert stored == ["first", "last"]


@pytest.mark.parametrize(
    ("body", "status", "error"),
    [
        (b"", 400, "empty_batch"),
        (b"\n \n", 400, "empty_batch"),
        (b"\xff\xfe\n", 400, "bad_body"),
    ],
    ids=["empty", "blank-lines", "not-utf8"],
)
def test_a_batch_no_line_of_which_can_be_read_is_refused_whole(gateway, body, status, error):
    response = httpx.post(f"{gateway.url}/publish", content=body, timeout=10)
    assert (response.status_code, response.json()["error"]) == (status, error)


@pytest.fixture(scope="module")
def small_gateway(redis_server: RedisProcess) -> Iterator[GatewayProcess]:
    env = {
        "SSE_GATEWAY_MAX_BATCH_EVENTS": "5",
        "SSE_GATEWAY_MAX_BATCH_BYTES": "2000",
        "SSE_GATEWAY_MAX_BODY_BYTES": "100",
    }
    process = GatewayProcess(redis_server.url, env=env).start()
    yield process
    process.stop()


def test_the_batch_limits_refuse_a_batch_whole_and_the_data_limit_one_line(small_gateway, names):
    url = f"{small_gateway.url}/publish"
    too_many = httpx.post(url, content=ndjson(*({"channel": names[0], "data": "x"} for _ in range(6))), timeout=10)
    assert (too_many.status_code, too_many.json()["error"]) == (413, "too_many_events")
    too_big = httpx.post(url, content=ndjson({"channel": names[0], "data": "x" * 2100}), timeout=10)
    assert (too_big.status_code, too_big.json()["error"]) == (413, "body_too_large")
    one_line = httpx.post(
        url, content=ndjson({"channel": names[0], "data": "é" * 60}, {"channel": names[0], "data": "ok"}), timeout=10
    )
    assert one_line.status_code == 207
    assert [r.get("error") for r in one_line.json()["results"]] == ["body_too_large", None], "60 é are 120 bytes"


@pytest.fixture(scope="module")
def protected_gateway(redis_server: RedisProcess) -> Iterator[GatewayProcess]:
    env = {"SSE_GATEWAY_AUTH": "jwt", "SSE_GATEWAY_JWT_SECRET": SECRET, "SSE_GATEWAY_JWT_AUDIENCE": AUDIENCE}
    process = GatewayProcess(redis_server.url, env=env).start()
    yield process
    process.stop()


def test_auth_is_checked_per_channel_and_bad_credentials_refuse_the_batch(protected_gateway, names):
    allowed, other, _ = names
    url = f"{protected_gateway.url}/publish"
    body = ndjson({"channel": allowed, "data": "yes"}, {"channel": other, "data": "no"})
    anonymous = httpx.post(url, content=body, timeout=10)
    assert (anonymous.status_code, anonymous.json()["error"]) == (401, "unauthorized")
    forged = httpx.post(url, content=body, headers={"Authorization": "Bearer not.a.token"}, timeout=10)
    assert forged.status_code == 401
    token = hs256(claims(publish=[allowed]))
    granted = httpx.post(url, content=body, headers={"Authorization": f"Bearer {token}"}, timeout=10)
    assert granted.status_code == 207, granted.text
    assert [r.get("error") for r in granted.json()["results"]] == [None, "forbidden"]


async def test_a_burst_of_batches_reaches_a_live_client_whole_without_evicting_it(gateway, names):
    # Thousands of events arrive from Redis at once; the reader must let the flusher write them out as they come,
    # or the client's queue (1024 events) fills and it is evicted.
    channel = names[0]
    batch = ndjson(*({"channel": channel, "data": f"{n}"} for n in range(2000)))
    async with open_stream(f"{gateway.url}/events/{channel}") as stream, httpx.AsyncClient(timeout=30) as client:
        await stream.read_raw_until(b"retry:")
        answers = await asyncio.gather(*(client.post(f"{gateway.url}/publish", content=batch) for _ in range(4)))
        assert all(a.status_code == 201 for a in answers)
        events = await stream.take(8000, timeout=30)
        assert not stream.finished, "the client was not evicted"
    assert sorted(int(e.data) for e in events) == sorted(list(range(2000)) * 4)


def test_lines_no_text_can_carry_or_nested_past_reason_are_bad_lines_not_a_failed_batch(gateway, names):
    body = (
        b'{"channel": "%s", "data": "\\ud800"}\n' % names[0].encode()  # a lone surrogate: not Unicode text
        + b"[" * 100_000
        + b"\n"  # deeper than the JSON parser recurses
        + ndjson({"channel": names[0], "data": "fine"})
    )
    response = httpx.post(f"{gateway.url}/publish", content=body, timeout=10)
    assert response.status_code == 207, response.text
    assert [r.get("error") for r in response.json()["results"]] == ["bad_line", "bad_line", None]


def test_other_methods_on_the_publish_paths_are_405(gateway):
    for path in ("/publish", "/publish/x"):
        response = httpx.get(f"{gateway.url}{path}", timeout=10)
        assert (response.status_code, response.json()["error"]) == (405, "method_not_allowed")
