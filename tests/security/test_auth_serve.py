"""Auth as `sse-gateway serve` and `sse-gateway token` run it: a stream ends when its token expires, tokens never
reach the log, minted tokens are accepted, and an exposed gateway without keys refuses to start."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from gateway.brokers.single import PUBLISH_SCRIPT
from sse_gateway_client import SSEParser
from tests.auth_setup import (
    AUDIENCE,
    NO_KEYS,
    SECRET,
    auth_gateways,
    claims,
    hs256,
    read_stream,
    with_flipped_signature,
)
from tests.servers import GatewayProcess, RedisProcess, wait_until


@pytest.fixture(scope="module")
def key_directory(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("auth-keys")


@pytest.fixture(scope="module")
def gateways(redis_server: RedisProcess, key_directory: Path):
    with auth_gateways(redis_server.url, key_directory) as processes:
        yield processes


@pytest.fixture(scope="module")
def http():
    with httpx.Client(timeout=5) as client:
        yield client


def _channel(prefix: str = "g") -> str:
    return f"{prefix}.{uuid.uuid4().hex[:10]}"


def _read_until_the_gateway_ends(response: httpx.Response, expires: int) -> tuple[list[str], float]:
    """The events of a stream that the gateway must end by itself; a bounded wait, not a speed check."""
    parser, events = SSEParser(), []
    deadline = expires + 30
    for chunk in response.iter_raw():  # heartbeats come every second, so this loop sees the deadline pass
        events += [event.data for event in parser.feed(chunk)]
        if time.time() > deadline:
            pytest.fail("the stream outlived its token")
    return events, time.time()


def _assert_expired(response: httpx.Response) -> None:
    assert response.status_code == 401
    assert response.json()["error"] == "unauthorized" and "expired" in response.json()["detail"]
    assert response.headers["www-authenticate"].startswith("Bearer")


def test_stream_ends_at_token_expiry_and_a_reconnect_with_it_is_refused(gateways, redis_server, http):
    channel, expires = _channel(), int(time.time()) + 3  # two to three seconds from now
    url = f"{gateways['hs'].url}/events/{channel}"
    headers = {"Authorization": f"Bearer {hs256(claims([channel], exp=expires))}"}
    with http.stream("GET", url, headers=headers) as response:
        assert response.status_code == 200
        wait_until(lambda: redis_server.subscriptions(channel) > 0, what="subscription")
        redis_server.publish_with_script(channel, "before expiry")
        events, ended = _read_until_the_gateway_ends(response, expires)
    assert events == ["before expiry"]
    assert ended >= expires, "the stream ended before its token expired"
    _assert_expired(http.get(url, headers=headers))


def test_stream_ends_at_token_expiry_while_events_keep_arriving(gateways, redis_server, http):
    channel, expires = _channel(), int(time.time()) + 3
    token = hs256(claims([channel], exp=expires))
    stop = threading.Event()

    def publish_every_10ms() -> None:
        publisher, keys = redis_server.client(), [f"sse:{{{channel}}}:buffer", f"sse:{{{channel}}}"]
        while not stop.wait(0.01):
            publisher.eval(PUBLISH_SCRIPT, 2, *keys, 1000, 3600000, "", "busy")

    publisher = threading.Thread(target=publish_every_10ms, daemon=True)
    url = f"{gateways['hs'].url}/events/{channel}"
    try:
        with http.stream("GET", url, params={"access_token": token}) as response:
            assert response.status_code == 200
            publisher.start()
            events, ended = _read_until_the_gateway_ends(response, expires)
    finally:
        stop.set()
        if publisher.is_alive():
            publisher.join(5)
    assert len(events) > 50 and set(events) == {"busy"}
    assert ended >= expires, "the stream ended before its token expired"
    _assert_expired(http.get(url, params={"access_token": token}))


def test_tokens_in_the_query_string_never_reach_the_log(gateways, redis_server, http):
    gateway, channel = gateways["hs"], _channel()
    events, publish = f"{gateway.url}/events/{channel}", f"{gateway.url}/publish/{channel}"
    valid = hs256(claims([channel], [channel]))
    invalid = [
        hs256(claims([channel], [channel], exp=int(time.time()) - 60)),
        with_flipped_signature(valid),
        f"garbage-{uuid.uuid4().hex}",
    ]
    assert read_stream(http, redis_server, events, params=[("access_token", valid)], publish_to=channel).events
    assert http.post(publish, params={"access_token": valid}, content="x").status_code == 201
    for token in invalid:
        assert http.get(events, params={"access_token": token}).status_code == 401
        assert http.post(publish, params={"access_token": token}, content="x").status_code == 401
    log = gateway.log()
    for token in [valid, *invalid]:
        assert token not in log and token.split(".")[-1] not in log
    assert f'"GET /events/{channel}?access_token=[redacted] HTTP/1.1" 200' in log
    assert f'"POST /publish/{channel}?access_token=[redacted] HTTP/1.1" 201' in log
    assert log.count(f'/{channel}?access_token=[redacted] HTTP/1.1" 401') == 2 * len(invalid)


@pytest.mark.parametrize("query", ["access%5Ftoken={}", "%61ccess_%74oken={}", "access_token=x&access_token={}"])
def test_a_token_the_gateway_accepts_under_another_spelling_never_reaches_the_log(query, gateways, http):
    gateway, channel = gateways["hs"], _channel()
    token = hs256(claims([channel]))
    with http.stream("GET", f"{gateway.url}/events/{channel}?{query.format(token)}") as response:
        assert response.status_code == 200  # starlette decodes parameter names, so the token was used
    assert token not in gateway.log() and token.split(".")[-1] not in gateway.log()


def _token_cli(*args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "gateway", "token", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=30)


CLI_KEYS = {
    "hs": ("hs", ["--secret", SECRET]),
    "rs": ("rs", ["--private-key", "rsa-1.pem"]),
    "es": ("es", ["--private-key", "ec-1.pem", "--algorithm", "ES256"]),
    "jwks-rs": ("jwks", ["--private-key", "rsa-1.pem", "--kid", "rsa-1"]),
    "jwks-es": ("jwks", ["--private-key", "ec-1.pem", "--algorithm", "ES256", "--kid", "ec-1"]),
}


@pytest.mark.parametrize("signer", CLI_KEYS)
def test_token_command_mints_a_token_the_matching_gateway_accepts(signer, gateways, key_directory, redis_server, http):
    name, key_args = CLI_KEYS[signer]
    key_args = [str(key_directory / arg) if arg.endswith(".pem") else arg for arg in key_args]
    suffix = uuid.uuid4().hex[:10]
    readable, writable = f"a.{suffix}", f"b.{suffix}"
    result = _token_cli(*key_args, "--subscribe", "a.*", "--publish", writable, "--audience", AUDIENCE)
    assert result.returncode == 0, result.stderr
    url, bearer = gateways[name].url, {"Authorization": f"Bearer {result.stdout.strip()}"}

    stream = read_stream(http, redis_server, f"{url}/events/{readable}", headers=bearer, publish_to=readable)
    assert (stream.status, stream.events) == (200, ["live"])
    assert http.post(f"{url}/publish/{writable}", headers=bearer, content="x").status_code == 201
    assert http.post(f"{url}/publish/{readable}", headers=bearer, content="x").json()["error"] == "forbidden"
    assert http.get(f"{url}/events/{writable}", headers=bearer).json()["error"] == "forbidden"
    buffered = [redis_server.client().xlen(f"sse:{{{channel}}}:buffer") for channel in (writable, readable)]
    assert buffered == [1, 1]  # the granted publish, and the "live" event the stream read: not the forbidden one


def test_token_command_with_an_ec_key_and_no_algorithm_signs_es256(gateways, key_directory, redis_server, http):
    channel = _channel("a")
    result = _token_cli("--private-key", str(key_directory / "ec-1.pem"), "--subscribe", "a.*", "--audience", AUDIENCE)
    # The key says which algorithm fits (gateway.security.tokens.mint): refusing it would be a regression, not a choice.
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert jwt.get_unverified_header(result.stdout.strip())["alg"] == "ES256"
    bearer = {"Authorization": f"Bearer {result.stdout.strip()}"}
    stream = read_stream(
        http, redis_server, f"{gateways['es'].url}/events/{channel}", headers=bearer, publish_to=channel
    )
    assert (stream.status, stream.events) == (200, ["live"])


def _refused_start(gateway: GatewayProcess) -> str:
    try:
        with pytest.raises(RuntimeError, match="exited"):
            gateway.start()
        assert gateway.process is not None and gateway.process.returncode not in (0, None)
        return gateway.log()
    finally:
        gateway.stop()


def test_exposed_gateway_without_keys_refuses_to_start(redis_server):
    log = _refused_start(GatewayProcess(redis_server.url, "--host", "0.0.0.0", env=NO_KEYS))
    assert "ERROR gateway.server: not starting: the gateway would listen on 0.0.0.0 with no JWT key" in log
    assert "Traceback" not in log


def test_unusable_jwks_file_refuses_to_start_with_a_clear_log_line(redis_server, tmp_path):
    jwks = tmp_path / "jwks.json"
    jwks.write_text('{"keys": []}')
    log = _refused_start(GatewayProcess(redis_server.url, env={**NO_KEYS, "SSE_GATEWAY_JWT_JWKS_FILE": str(jwks)}))
    assert "ERROR gateway.server: not starting:" in log
    assert "Traceback" not in log


@pytest.mark.parametrize(
    ("args", "env", "warning"),
    [
        (["--host", "0.0.0.0", "--auth", "off"], {}, "WARNING gateway.security.auth: authentication is OFF (auth=off)"),
        ([], {}, "WARNING gateway.security.auth: authentication is OFF: no JWT key or API key is configured, and the "
         "gateway listens on loopback (127.0.0.1) only"),
        (["--host", "0.0.0.0"], {"SSE_GATEWAY_API_KEYS": "key-one"}, None),
    ],
    ids=["exposed-auth-off", "loopback-no-keys", "exposed-with-api-key"],
)  # fmt: skip
def test_gateway_that_starts_says_whether_auth_is_off(args, env, warning, redis_server, http):
    gateway = GatewayProcess(redis_server.url, *args, env={**NO_KEYS, **env}).start()
    try:
        channel, log = _channel(), gateway.log()
        anonymous = http.post(f"{gateway.url}/publish/{channel}", content="x")
        keyed = http.post(f"{gateway.url}/publish/{channel}", headers={"X-API-Key": "key-one"}, content="x")
    finally:
        gateway.stop()
    if warning is None:
        assert "authentication is OFF" not in log
        assert (anonymous.status_code, keyed.status_code) == (401, 201)
    else:
        assert warning in log
        assert (anonymous.status_code, keyed.status_code) == (201, 201)


def _serve_refused(env: dict[str, str], *args: str) -> tuple[int, list[str]]:
    """``sse-gateway serve`` that must refuse to start: its exit code and output lines, within a bounded time."""
    command = [sys.executable, "-m", "gateway", "serve", "--port", "0", "--redis-url", "redis://127.0.0.1:1/0", *args]
    result = subprocess.run(command, capture_output=True, text=True, timeout=30, env={**os.environ, **NO_KEYS, **env})
    return result.returncode, (result.stdout + result.stderr).splitlines()


def _ed25519_public_key(directory: Path) -> Path:
    path = directory / "ed25519.pub.pem"
    key = ed25519.Ed25519PrivateKey.generate().public_key()
    path.write_bytes(key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    return path


@pytest.mark.parametrize("problem", ["missing", "a-directory", "ed25519"])
def test_a_public_key_file_that_cannot_be_used_refuses_to_start_with_one_clear_line(problem, tmp_path):
    # As root a file's mode does not stop a read, so "unreadable" is a path that is missing or is a directory.
    path = {
        "missing": tmp_path / "no-such-key.pem",
        "a-directory": tmp_path,
        "ed25519": _ed25519_public_key(tmp_path),
    }[problem]
    code, lines = _serve_refused({"SSE_GATEWAY_JWT_PUBLIC_KEY_FILE": str(path)})
    assert code == 2, lines
    assert len(lines) == 1 and "ERROR gateway.server: not starting: " in lines[0], lines
    assert str(path) in lines[0], "the message names the file"
    if problem == "ed25519":
        assert "only RSA (RS256) and EC P-256 (ES256) public keys are supported" in lines[0]
