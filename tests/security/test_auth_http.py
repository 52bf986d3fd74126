"""Authorization end to end: real gateways (HS256, RS256 and ES256 public keys, a JWKS) over one real Redis.

The matrix crosses every signer with token kinds, transports and operations, and checks each case on its own: the
status, the error code, ``WWW-Authenticate`` on 401, no event data on a refused stream, and nothing written to the
Redis buffer on a refused publish. The "ticket" transport trades the token for a stream ticket (``POST /tickets``
with the token as a Bearer, naming the operation's channels) and uses the ticket in its place; the trade is refused
as the stream would be, and a ticket never publishes.
"""

from __future__ import annotations

import functools
import itertools
import json
import time
import uuid
from dataclasses import dataclass

import httpx
import pytest

from tests.auth_setup import (
    EC,
    RSA,
    KeyPair,
    Result,
    auth_gateways,
    claims,
    hs256,
    read_stream,
    unsigned,
    with_flipped_signature,
    with_payload,
)
from tests.servers import GatewayProcess, RedisProcess

# Same kid and algorithm as the trusted keys, other key material.
ROGUE_RSA, ROGUE_EC = KeyPair.generate("RS256", "rsa-1"), KeyPair.generate("ES256", "ec-1")

SIGNERS = {"hs": "hs", "rs": "rs", "es": "es", "jwks-rs": "jwks", "jwks-es": "jwks"}  # signer -> gateway
VALID = ("granted", "subscribe-only", "other-channel")
INVALID = (
    "expired",
    "tampered-payload",
    "tampered-signature",
    "alg-none",
    "hs256-keyed-with-public-key",
    "untrusted-key",  # for the HS256 gateway: an RS256 token
    "wrong-audience",
    "missing-exp",
    "garbage",
)
TRANSPORTS = ("bearer", "cookie", "query", "ticket")
OPERATIONS = ("subscribe", "subscribe-public", "multi-granted", "multi-partial", "replay", "publish")


@dataclass(frozen=True)
class Case:
    signer: str
    kind: str
    transport: str
    operation: str

    def __str__(self) -> str:
        return f"{self.signer}/{self.kind}/{self.transport}/{self.operation}"

    @property
    def expected(self) -> int:
        if self.kind in INVALID:
            return 401
        if self.operation == "subscribe-public":
            return 200
        if self.kind == "none":
            return 401
        if self.operation == "publish" and self.transport == "ticket":
            # A ticket is not a credential to publish with, once the token could be traded for one at all.
            return 403 if self.kind == "other-channel" else 401
        if self.operation == "publish":
            return 201 if self.kind == "granted" else 403
        if self.operation == "multi-partial" or self.kind == "other-channel":
            return 403
        return 200


PAIRS = [("none", "-"), *itertools.product(VALID + INVALID, TRANSPORTS)]
CASES = [Case(signer, kind, transport, op) for signer in SIGNERS for kind, transport in PAIRS for op in OPERATIONS]


@pytest.fixture(scope="module")
def gateways(redis_server: RedisProcess, tmp_path_factory: pytest.TempPathFactory):
    with auth_gateways(redis_server.url, tmp_path_factory.mktemp("auth-keys")) as processes:
        yield processes


@pytest.fixture(scope="module")
def tokens() -> dict[str, dict[str, str]]:
    return {signer: _tokens_for(signer) for signer in SIGNERS}


@pytest.fixture(scope="module")
def http():
    with httpx.Client(timeout=5) as client:
        yield client


def _tokens_for(signer: str) -> dict[str, str]:
    trusted, rogue, public = {
        "hs": (None, RSA, RSA.public_pem),
        "rs": (RSA, ROGUE_RSA, RSA.public_pem),
        "es": (EC, ROGUE_EC, EC.public_pem),
        "jwks-rs": (RSA, ROGUE_RSA, json.dumps(RSA.jwk()).encode()),
        "jwks-es": (EC, ROGUE_EC, json.dumps(EC.jwk()).encode()),
    }[signer]
    sign = trusted.sign if trusted else hs256
    now = int(time.time())
    granted = claims(["g.*"], ["g.*"])
    return {
        "granted": sign(granted),
        "subscribe-only": sign(claims(["g.*"])),
        "other-channel": sign(claims(["o.*"], ["o.*"])),
        "expired": sign(claims(["g.*"], ["g.*"], iat=now - 120, exp=now - 60)),
        "tampered-payload": with_payload(sign(claims(["o.*"])), claims(["*"], ["*"])),
        "tampered-signature": with_flipped_signature(sign(granted)),
        "alg-none": unsigned(granted),
        "hs256-keyed-with-public-key": hs256(granted, public, **({"kid": trusted.kid} if trusted else {})),
        "untrusted-key": rogue.sign(granted),
        "wrong-audience": sign(claims(["g.*"], ["g.*"], aud="someone-else")),
        "missing-exp": sign(claims(["g.*"], ["g.*"], exp=None)),
        "garbage": f"garbage-{signer}-not-a-jwt",
    }


def _credentials(transport: str, token: str | None) -> tuple[dict[str, str], list[tuple[str, str]]]:
    if token is None:
        return {}, []
    if transport in ("bearer", "ticket"):
        return {"Authorization": f"Bearer {token}"}, []
    if transport == "cookie":
        return {"Cookie": f"sse_token={token}"}, []
    return {}, [("access_token", token)]


def _channels_of(operation: str, mine: str) -> list[str]:
    return {
        "subscribe-public": [f"public.{mine}"],
        "multi-granted": [mine, f"{mine}-b"],
        "multi-partial": [mine, f"x.{mine}"],
    }.get(operation, [mine])


def _run(case: Case, http, gateway: GatewayProcess, redis_server: RedisProcess, token: str | None) -> Result:
    headers, params = _credentials(case.transport, token)
    mine = f"g.{uuid.uuid4().hex[:10]}"
    if case.transport == "ticket":
        body = {"channels": _channels_of(case.operation, mine)}
        traded = http.post(f"{gateway.url}/tickets", headers=headers, json=body)
        if traded.status_code != 201:
            return Result(traded.status_code, traded.headers, traded.content)
        headers, params = {}, [("ticket", traded.json()["ticket"])]
    stream = functools.partial(read_stream, http, redis_server, headers=headers)
    if case.operation == "subscribe":
        return stream(f"{gateway.url}/events/{mine}", params=params, publish_to=mine)
    if case.operation == "subscribe-public":
        return stream(f"{gateway.url}/events/public.{mine}", params=params, publish_to=f"public.{mine}")
    if case.operation in ("multi-granted", "multi-partial"):
        channels = [("channel", name) for name in _channels_of(case.operation, mine)]
        return stream(f"{gateway.url}/events", params=[*channels, *params], publish_to=mine)
    if case.operation == "replay":
        first = redis_server.publish_with_script(mine, "backlog-1")
        redis_server.publish_with_script(mine, "backlog-2")
        url = f"{gateway.url}/events/{mine}"
        return read_stream(http, redis_server, url, headers={**headers, "Last-Event-ID": first}, params=params)
    response = http.post(f"{gateway.url}/publish/{mine}", headers=headers, params=params, content="write-attempt")
    written = redis_server.client().xlen(f"sse:{{{mine}}}:buffer")
    return Result(response.status_code, response.headers, response.content, written=written)


def _check(result: Result, expected: int, description: str, *, data: str = "live") -> None:
    """The status, and for a refusal its JSON error, its WWW-Authenticate header (on 401 only), no event data read
    and nothing written."""
    assert result.status == expected, f"{description}: {result.status} {result.body[:200]!r} {result.events}"
    if expected == 200:
        assert result.events == [data]
    elif expected == 201:
        assert result.written == 1 and json.loads(result.body)["id"]
    else:
        assert result.headers["content-type"] == "application/json"
        assert json.loads(result.body)["error"] == {401: "unauthorized", 403: "forbidden"}[expected]
        assert (result.headers.get("www-authenticate", "").startswith("Bearer")) is (expected == 401)
        assert (result.events, result.written) == ([], 0)
        assert b"data:" not in result.body


@pytest.mark.parametrize("case", CASES, ids=str)
def test_authorization_matrix(case, gateways, tokens, redis_server, http):
    token = None if case.kind == "none" else tokens[case.signer][case.kind]
    result = _run(case, http, gateways[SIGNERS[case.signer]], redis_server, token)
    _check(result, case.expected, str(case), data="backlog-2" if case.operation == "replay" else "live")


API_KEY_CASES = [
    ("hs", "key-one", None, 201),
    ("hs", "key-two", None, 201),
    ("hs", "key-one", "other-channel", 201),
    ("hs", "key-three", None, 401),
    ("hs", "KEY-ONE", None, 401),
    ("hs", "key-one,key-two", None, 401),
    ("hs", "", None, 401),
    ("hs", "key-three", "granted", 401),
    ("rs", "key-one", None, 401),
    ("jwks", "key-two", None, 401),
]


@pytest.mark.parametrize(("gateway_name", "api_key", "kind", "expected"), API_KEY_CASES)
def test_publish_with_api_key(gateway_name, api_key, kind, expected, gateways, tokens, redis_server, http):
    channel = f"g.{uuid.uuid4().hex[:10]}"
    headers = {"X-API-Key": api_key}
    if kind is not None:
        headers["Authorization"] = f"Bearer {tokens['hs'][kind]}"
    response = http.post(f"{gateways[gateway_name].url}/publish/{channel}", headers=headers, content="x")
    written = redis_server.client().xlen(f"sse:{{{channel}}}:buffer")
    result = Result(response.status_code, response.headers, response.content, written=written)
    _check(result, expected, f"X-API-Key {api_key!r} with token {kind}")


def test_api_key_does_not_open_a_stream(gateways, redis_server, http):
    channel = f"g.{uuid.uuid4().hex[:10]}"
    url = f"{gateways['hs'].url}/events/{channel}"
    result = read_stream(http, redis_server, url, headers={"X-API-Key": "key-one"}, publish_to=channel)
    _check(result, 401, "API key on a stream")


def test_no_token_reaches_a_gateway_log_whatever_its_transport(gateways, tokens, http):
    # Its own requests, so it holds whichever tests ran before it: every token of every signer, on each transport.
    for signer, kinds in tokens.items():
        url = gateways[SIGNERS[signer]].url
        for token, transport in itertools.product(kinds.values(), TRANSPORTS):
            headers, params = _credentials(transport, token)
            channel = f"g.{uuid.uuid4().hex[:10]}"
            response = http.post(f"{url}/publish/{channel}", headers=headers, params=params, content="x")
            assert response.status_code in (201, 401, 403), response.text
    logs = {name: gateway.log() for name, gateway in gateways.items()}
    leaked = [
        (name, kind) for name, log in logs.items() for kinds in tokens.values() for kind, t in kinds.items() if t in log
    ]
    assert leaked == []
    assert all("access_token=[redacted]" in log for log in logs.values()), "the query-string requests were logged"
