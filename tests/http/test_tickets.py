"""Stream tickets end to end: ``POST /tickets`` on real gateways over one real Redis, and streams opened with them.

The auth matrix (tests/security/test_auth_http.py) runs every signer and token kind through a ticket too; these are
the rules of tickets themselves: their channels, their lifetime, their store, their errors and the logs.
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from collections.abc import Iterator

import httpx
import pytest

from gateway.security.tokens import mint
from tests.auth_setup import NO_KEYS, SECRET, read_stream
from tests.servers import GatewayProcess, RedisProcess, wait_until

AUTH = {
    **NO_KEYS,
    "SSE_GATEWAY_JWT_SECRET": SECRET,
    "SSE_GATEWAY_API_KEYS": "publisher-key",
    "SSE_GATEWAY_TICKET_API_KEYS": "backend-key",
}


@pytest.fixture(scope="module")
def gateways(redis_server: RedisProcess) -> Iterator[tuple[GatewayProcess, GatewayProcess]]:
    """Two gateways on one Redis: a ticket made at either opens streams at both."""
    first, second = (GatewayProcess(redis_server.url, env=AUTH) for _ in range(2))
    first.start()
    second.start()
    yield first, second
    first.stop()
    second.stop()


@pytest.fixture(scope="module")
def http() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=10) as client:
        yield client


def token(*channels: str, ttl: float = 600) -> dict[str, str]:
    return {"Authorization": "Bearer " + mint(subscribe=channels, ttl=ttl, secret=SECRET)}


def names(count: int = 2) -> list[str]:
    base = "t" + uuid.uuid4().hex[:8]
    return [f"{base}-{i}" for i in range(count)]


def make_ticket(http: httpx.Client, gateway: GatewayProcess, channels: list[str], **headers: str) -> httpx.Response:
    return http.post(f"{gateway.url}/tickets", json={"channels": channels}, headers=headers)


def stream_params(channels: list[str], ticket: str) -> list[tuple[str, str]]:
    return [*(("channel", name) for name in channels), ("ticket", ticket)]


def refusal(response: httpx.Response) -> tuple[int, str]:
    return response.status_code, response.json()["error"]


def test_a_ticket_opens_a_stream_of_its_channels_at_any_gateway_on_the_redis(gateways, http, redis_server):
    first, second = gateways
    channels = names()
    made = make_ticket(http, first, channels, **token("t*"))
    assert made.status_code == 201, made.text
    assert made.headers["cache-control"] == "no-store"
    answer = made.json()
    assert answer["channels"] == channels and answer["expires_in"] == 60 and len(answer["ticket"]) >= 40
    for gateway in (first, second):
        url = f"{gateway.url}/events"
        result = read_stream(
            http, redis_server, url, params=stream_params(channels, answer["ticket"]), publish_to=channels[1]
        )
        assert (result.status, result.events) == (200, ["live"])
    one = read_stream(
        http,
        redis_server,
        f"{second.url}/events/{channels[0]}",
        params=[("ticket", answer["ticket"])],
        publish_to=channels[0],
    )
    assert (one.status, one.events) == (200, ["live"]), "a stream of fewer of its channels"


def test_a_ticket_opens_no_channel_but_its_own(gateways, http):
    first, _ = gateways
    mine, other = names()
    ticket = make_ticket(http, first, [mine], **token("t*")).json()["ticket"]
    for params in ([("ticket", ticket)], stream_params([mine, other], ticket)):
        url = f"{first.url}/events" + ("" if len(params) > 1 else f"/{other}")
        with http.stream("GET", url, params=params) as response:
            assert response.status_code == 403  # before reading: an opened stream would never end
            response.read()
        assert refusal(response) == (403, "forbidden")
        assert "the ticket does not grant" in response.json()["detail"]


def test_a_ticket_for_channels_the_token_does_not_grant_is_refused_as_the_stream_would_be(gateways, http):
    first, _ = gateways
    mine = names(1)
    assert refusal(make_ticket(http, first, ["x-not-granted", *mine], **token("t*"))) == (403, "forbidden")
    assert refusal(make_ticket(http, first, mine)) == (401, "unauthorized")
    assert refusal(make_ticket(http, first, mine, **token("t*", ttl=-60))) == (401, "unauthorized")
    assert refusal(make_ticket(http, first, mine, **{"X-API-Key": "not-the-key"})) == (401, "unauthorized")


def test_a_ticket_key_makes_tickets_for_any_channel_a_publishing_key_none_and_a_ticket_none(
    gateways, http, redis_server
):
    first, _ = gateways
    channels = ["any-" + uuid.uuid4().hex[:8]]
    assert refusal(make_ticket(http, first, channels, **{"X-API-Key": "publisher-key"})) == (403, "forbidden")
    made = make_ticket(http, first, channels, **{"X-API-Key": "backend-key"})
    assert made.status_code == 201, made.text
    ticket = made.json()["ticket"]
    result = read_stream(
        http, redis_server, f"{first.url}/events/{channels[0]}", params=[("ticket", ticket)], publish_to=channels[0]
    )
    assert (result.status, result.events) == (200, ["live"])
    again = http.post(f"{first.url}/tickets", params={"ticket": ticket}, json={"channels": channels})
    assert refusal(again) == (401, "unauthorized")
    published = http.post(f"{first.url}/publish/{channels[0]}", params={"ticket": ticket}, content="x")
    assert refusal(published) == (401, "unauthorized")


def test_a_ticket_never_outlives_its_token_and_its_stream_ends_when_the_token_would_have(gateways, http):
    first, _ = gateways
    channel = names(1)[0]
    made = make_ticket(http, first, [channel], **token("t*", ttl=3)).json()
    assert made["expires_in"] <= 3, "a ticket made from a token with 3 s left"
    deadline = time.monotonic() + 15
    with http.stream("GET", f"{first.url}/events/{channel}", params={"ticket": made["ticket"]}) as response:
        assert response.status_code == 200
        # Keepalives come every second: only the gateway ending the stream at the token's expiry ends this loop.
        for _ in response.iter_raw():
            assert time.monotonic() < deadline, "the stream outlived the token it was made from"

    def closing() -> list[str]:
        return [line for line in first.log().splitlines() if "stream closed" in line and f"channels={channel} " in line]

    wait_until(closing, what="the stream's closing line")
    assert "reason=auth_expired" in closing()[0]


def test_with_authentication_off_a_ticket_is_answered_and_nothing_is_written_to_redis(gateway, http, redis_server):
    made = make_ticket(http, gateway, names(1))
    assert made.status_code == 201, made.text
    digest = hashlib.sha256(made.json()["ticket"].encode()).hexdigest()
    assert redis_server.client().keys(f"*ticket:{digest}") == []


def test_an_unknown_or_expired_ticket_is_a_401_that_says_so(redis_server, http):
    gateway = GatewayProcess(redis_server.url, env={**AUTH, "SSE_GATEWAY_TICKET_TTL": "0.5"}).start()
    try:
        channel = names(1)[0]
        unknown = http.get(f"{gateway.url}/events/{channel}", params={"ticket": "no-such-ticket"})
        assert refusal(unknown) == (401, "unauthorized")
        assert "ticket is not valid or has expired" in unknown.json()["detail"]
        assert unknown.headers["www-authenticate"].startswith("Bearer")
        ticket = make_ticket(http, gateway, [channel], **token("t*")).json()["ticket"]
        url = f"{gateway.url}/events/{channel}"
        assert http.head(url, params={"ticket": ticket}).status_code == 200
        wait_until(lambda: http.head(url, params={"ticket": ticket}).status_code == 401, what="the ticket to expire")
        assert refusal(http.get(url, params={"ticket": ticket})) == (401, "unauthorized")
    finally:
        gateway.stop()


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b"not json", (400, "bad_body")),
        (b'["a"]', (400, "bad_body")),
        (b'{"channels": "a"}', (400, "bad_body")),
        (b'{"channels": []}', (400, "bad_body")),
        (b'{"channels": ["a", 1]}', (400, "bad_body")),
        (b'{"channels": ["a b"]}', (400, "bad_channel")),
        (json.dumps({"channels": [f"c{i}" for i in range(17)]}).encode(), (400, "too_many_channels")),
        (json.dumps({"channels": ["a"], "pad": "x" * 20_000}).encode(), (413, "body_too_large")),
        (b"\xff\xfe", (400, "bad_body")),
    ],
)
def test_a_bad_ticket_request_is_a_4xx_that_names_the_problem(gateways, http, body, expected):
    response = http.post(f"{gateways[0].url}/tickets", content=body, headers=token("*"))
    assert refusal(response) == expected, response.text
    assert http.get(f"{gateways[0].url}/healthz").status_code == 200


def test_while_redis_is_down_a_ticket_request_is_a_503_and_a_ticket_stream_is_asked_to_come_back(http):
    redis = RedisProcess().start()
    gateway = GatewayProcess(redis.url, env=AUTH).start()
    try:
        channels = names(1)
        ticket = make_ticket(http, gateway, channels, **token("t*")).json()["ticket"]
        redis.kill()
        assert refusal(make_ticket(http, gateway, channels, **token("t*"))) == (503, "redis_unavailable")
        # A 200 that ends at once with a retry: hint, as a stream whose start Redis fails: EventSource would give up
        # for good on a 503.
        stream = http.get(f"{gateway.url}/events/{channels[0]}", params={"ticket": ticket})
        assert (stream.status_code, stream.headers["x-sse-refused"]) == (200, "redis")
        assert "retry: 200" in stream.text and "data:" not in stream.text
        redis.start()
        wait_until(gateway.ready, what="the gateway ready again")
        assert make_ticket(http, gateway, channels, **token("t*")).status_code == 201
    finally:
        gateway.stop()
        redis.stop()


def test_no_ticket_reaches_a_gateway_log(gateways, http):
    first, second = gateways
    tickets = []
    for gateway in (first, second):
        channel = names(1)[0]
        ticket = make_ticket(http, gateway, [channel], **token("t*")).json()["ticket"]
        tickets.append(ticket)
        assert http.head(f"{gateway.url}/events/{channel}", params={"ticket": ticket}).status_code == 200
        with http.stream("GET", f"{gateway.url}/events/{channel}", params={"ticket": ticket}) as response:
            assert response.status_code == 200
            assert next(response.iter_raw()).startswith(b": connected")  # open, and its request logged
    logs = first.log() + second.log()
    assert "ticket=[redacted]" in logs
    assert [t for t in tickets if t in logs] == []
