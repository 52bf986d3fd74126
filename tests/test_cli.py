"""The sse-gateway command as a user runs it: publish (through the gateway or Redis) and listen, with credentials,
and the serve flags generated from Settings."""

from __future__ import annotations

import dataclasses
import json
import os
import queue
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator

import pytest

from gateway.cli import build_parser, main, serve_settings
from gateway.config import Settings, kind
from tests.auth_setup import AUDIENCE, NO_KEYS, SECRET, claims, hs256
from tests.servers import GatewayProcess, RedisProcess, wait_until

# Blank (unset) client credentials, so that the environment the tests run in cannot lend its own.
NO_CREDENTIALS = {"SSE_GATEWAY_TOKEN": "", "SSE_GATEWAY_API_KEY": ""}
API_KEY = "cli-test-key"


def _cli(*args: str, stdin: bytes = b"", env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [sys.executable, "-m", "gateway", *args],
        input=stdin,
        capture_output=True,
        timeout=30,
        env={**os.environ, **NO_CREDENTIALS, **(env or {})},
    )
    return subprocess.CompletedProcess(result.args, result.returncode, result.stdout.decode(), result.stderr.decode())


def _listen(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "gateway", "listen", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **NO_CREDENTIALS, "PYTHONUNBUFFERED": "1"},
    )


def _lines(process: subprocess.Popen[str], count: int, timeout: float = 20.0) -> list[str]:
    """The first `count` lines the process prints, or queue.Empty when they do not come in time."""
    printed: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [printed.put(line) for line in process.stdout], daemon=True).start()
    return [printed.get(timeout=timeout) for _ in range(count)]


def _buffer(redis_server: RedisProcess, channel: str) -> list[tuple[str, bytes]]:
    return [
        (entry_id.decode(), fields[b"d"])
        for entry_id, fields in redis_server.client().xrange(f"sse:{{{channel}}}:buffer")
    ]


@pytest.fixture(scope="module")
def keyed_gateway(redis_server: RedisProcess) -> Iterator[GatewayProcess]:
    """A gateway that takes the HS256 tokens of tests.auth_setup and one API key."""
    env = {
        **NO_KEYS,
        "SSE_GATEWAY_JWT_SECRET": SECRET,
        "SSE_GATEWAY_JWT_AUDIENCE": AUDIENCE,
        "SSE_GATEWAY_API_KEYS": API_KEY,
    }
    gateway = GatewayProcess(redis_server.url, env=env).start()
    yield gateway
    gateway.stop()


def test_publish_through_the_gateway_prints_the_id(gateway, redis_server, channel):
    result = _cli("publish", channel, "hello", "--event", "greeting", "--url", gateway.url)
    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout)
    entries = redis_server.client().xrange(f"sse:{{{channel}}}:buffer")
    assert [e[0].decode() for e in entries] == [answer["id"]]
    assert entries[0][1][b"e"] == b"greeting" and entries[0][1][b"d"] == b"hello"


def _target(path: str, gateway: GatewayProcess, redis_server: RedisProcess) -> tuple[str, str]:
    return ("--url", gateway.url) if path == "gateway" else ("--redis-url", redis_server.url)


@pytest.mark.parametrize("path", ["gateway", "redis"])
def test_publish_prints_one_compact_json_line_on_both_paths(path, gateway, redis_server, channel):
    result = _cli("publish", channel, "hello", *_target(path, gateway, redis_server))
    assert result.returncode == 0, result.stderr
    ((entry_id, _),) = _buffer(redis_server, channel)
    assert result.stdout == f'{{"channel":"{channel}","id":"{entry_id}"}}\n'


@pytest.mark.parametrize("path", ["gateway", "redis"])
@pytest.mark.parametrize(
    ("stdin", "data"),
    [
        (b"line 1\nline 2\n", b"line 1\nline 2"),
        (b"ends in a blank line\n\n", b"ends in a blank line\n"),
        (b"no newline", b"no newline"),
        (b"\n", b""),
        (b"crlf\r\n", b"crlf\r"),
        ("caf\u00e9 \u2713\n".encode(), "caf\u00e9 \u2713".encode()),
    ],
)
def test_publish_from_stdin_drops_exactly_one_trailing_newline(path, stdin, data, gateway, redis_server, channel):
    result = _cli("publish", channel, "-", *_target(path, gateway, redis_server), stdin=stdin)
    assert result.returncode == 0, result.stderr
    assert [d for _, d in _buffer(redis_server, channel)] == [data]


@pytest.mark.parametrize("path", ["gateway", "redis"])
def test_publish_of_stdin_that_is_not_utf8_is_refused_and_stores_nothing(path, gateway, redis_server, channel):
    result = _cli("publish", channel, "-", *_target(path, gateway, redis_server), stdin=b"caf\xe9\n")
    assert result.returncode == 1
    assert result.stderr.startswith("sse-gateway publish: bad_body") and "Traceback" not in result.stderr
    assert _buffer(redis_server, channel) == []


def test_publish_straight_into_redis_uses_the_same_script(redis_server, channel):
    result = _cli("publish", channel, "direct", "--redis-url", redis_server.url)
    assert result.returncode == 0, result.stderr
    (entry,) = redis_server.client().xrange(f"sse:{{{channel}}}:buffer")
    assert entry[0].decode() == json.loads(result.stdout)["id"]
    assert entry[1][b"p"] == b""


def test_publish_error_is_reported_with_nonzero_exit(gateway, channel):
    result = _cli("publish", channel, "x", "--event", "gap", "--url", gateway.url)
    assert result.returncode == 1
    assert "reserved" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize("args", [("bad name", "x"), ("ok", "x", "--event", "a\nb")])
def test_direct_publish_of_bad_input_is_an_error_message_not_a_traceback(redis_server, args):
    result = _cli("publish", *args, "--redis-url", redis_server.url)
    assert result.returncode == 1
    assert result.stderr.startswith("sse-gateway publish: bad_") and "Traceback" not in result.stderr


def test_direct_publish_with_redis_down_says_so(channel):
    result = _cli("publish", channel, "x", "--redis-url", "redis://127.0.0.1:1/0")
    assert result.returncode == 1
    assert "redis_unavailable" in result.stderr


@pytest.mark.timeout(60)
def test_listen_prints_events_and_exits_cleanly_on_ctrl_c(gateway, redis_server, channel):
    listener = _listen(channel, "--json", "--url", gateway.url)
    try:
        wait_until(lambda: redis_server.subscriptions(channel) == 1, what="the listener's subscription")
        event_id = redis_server.publish_with_script(channel, "two\nlines")
        (line,) = _lines(listener, 1)
        assert (json.loads(line)["id"], json.loads(line)["data"]) == (event_id, "two\nlines")
        listener.send_signal(signal.SIGINT)
        assert listener.wait(timeout=10) in (0, 130)
        assert "Traceback" not in listener.stderr.read()
    finally:
        listener.kill()
        listener.wait()


def test_listen_with_last_event_id_replays_what_came_after_it(gateway, redis_server, channel):
    ids = [redis_server.publish_with_script(channel, f"event {i}") for i in range(3)]
    listener = _listen(channel, "--json", "--last-event-id", ids[0], "--url", gateway.url)
    try:
        events = [json.loads(line) for line in _lines(listener, 2)]
        assert [(e["id"], e["data"]) for e in events] == [(ids[1], "event 1"), (ids[2], "event 2")]
    finally:
        listener.kill()
        listener.wait()


def test_publish_api_key_comes_from_the_flag_or_the_variable(keyed_gateway, redis_server, channel):
    refused = _cli("publish", channel, "none", "--url", keyed_gateway.url)
    assert refused.returncode == 1 and "401 unauthorized" in refused.stderr
    wrong = _cli("publish", channel, "wrong", "--url", keyed_gateway.url, "--api-key", "not-" + API_KEY)
    assert wrong.returncode == 1 and "401 unauthorized" in wrong.stderr
    flag = _cli("publish", channel, "flag", "--url", keyed_gateway.url, "--api-key", API_KEY)
    assert flag.returncode == 0, flag.stderr
    variable = _cli("publish", channel, "variable", "--url", keyed_gateway.url, env={"SSE_GATEWAY_API_KEY": API_KEY})
    assert variable.returncode == 0, variable.stderr
    assert [d for _, d in _buffer(redis_server, channel)] == [b"flag", b"variable"]


def test_publish_token_comes_from_the_flag_or_the_variable_and_needs_a_publish_grant(
    keyed_gateway, redis_server, channel
):
    may_publish, may_only_subscribe = hs256(claims(publish=[channel])), hs256(claims(subscribe=[channel]))
    granted = _cli("publish", channel, "granted", "--url", keyed_gateway.url, "--token", may_publish)
    assert granted.returncode == 0, granted.stderr
    variable = _cli("publish", channel, "variable", "--url", keyed_gateway.url, env={"SSE_GATEWAY_TOKEN": may_publish})
    assert variable.returncode == 0, variable.stderr
    forbidden = _cli("publish", channel, "no", "--url", keyed_gateway.url, "--token", may_only_subscribe)
    assert forbidden.returncode == 1 and "403 forbidden" in forbidden.stderr
    assert [d for _, d in _buffer(redis_server, channel)] == [b"granted", b"variable"]


def test_listen_with_a_token_receives_events_and_without_one_exits_with_the_refusal(
    keyed_gateway, redis_server, channel
):
    refused = _cli("listen", channel, "--url", keyed_gateway.url)
    assert refused.returncode == 1
    assert refused.stderr.startswith("sse-gateway listen: 401 unauthorized") and "Traceback" not in refused.stderr
    listener = _listen(channel, "--json", "--url", keyed_gateway.url, "--token", hs256(claims(subscribe=[channel])))
    try:
        wait_until(lambda: redis_server.subscriptions(channel) == 1, what="the listener's subscription")
        event_id = redis_server.publish_with_script(channel, "for token holders")
        (line,) = _lines(listener, 1)
        assert (json.loads(line)["id"], json.loads(line)["data"]) == (event_id, "for token holders")
    finally:
        listener.kill()
        listener.wait()


@pytest.mark.parametrize(
    ("args", "env", "named"),
    [
        (("serve", "--port", "eighty"), {}, "--port: 'eighty' is not a number"),
        (("serve", "--port", "0", "--auth", "maybe"), {}, "--auth: 'maybe' is not one of auto, jwt, off"),
        (("serve", "--port", "0", "--heartbeat", "0"), {}, "heartbeat must be greater than 0"),
        (("serve", "--port", "0", "--colour", "blue"), {}, "unrecognized arguments: --colour blue"),
        (("demo", "--port", "0", "--workers", "2"), {}, "unrecognized arguments: --workers 2"),
        (("serve", "--port", "0"), {"SSE_GATEWAY_PORT": "eighty"}, "SSE_GATEWAY_PORT='eighty' is not a number"),
        (("serve", "--port", "0"), {"SSE_GATEWAY_CORS_CREDENTIALS": "maybe"}, "SSE_GATEWAY_CORS_CREDENTIALS='maybe'"),
        (("serve", "--port", "0"), {"SSE_GATEWAY_LOG_LEVEL": "loud"}, "SSE_GATEWAY_LOG_LEVEL='loud' is not one of"),
        (("serve", "--port", "0"), {"SSE_GATEWAY_MAX_CHANNELS": "0"}, "max_channels must be greater than 0"),
        (("demo", "--port", "0"), {"SSE_GATEWAY_HEARTBEAT": "soon"}, "SSE_GATEWAY_HEARTBEAT='soon' is not a number"),
        (
            ("publish", "c", "x", "--redis-url", "redis://127.0.0.1:1/0"),
            {"SSE_GATEWAY_BUFFER_MAXLEN": "many"},
            "SSE_GATEWAY_BUFFER_MAXLEN='many' is not a number",
        ),
    ],
)
def test_bad_flag_or_variable_exits_2_with_one_line_naming_the_setting(args, env, named):
    result = _cli(*args, env=env)
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1 and named in result.stderr
    assert result.stderr.startswith(f"sse-gateway {args[0]}: ") or result.stderr.startswith("sse-gateway: ")
    assert result.stdout == ""


def _another_value(item: dataclasses.Field) -> tuple[list[str], object]:
    """Flag arguments that set the setting to a value other than its default, and that value."""
    flag, default = "--" + item.name.replace("_", "-"), item.default
    if item.metadata.get("choices"):
        value = next(choice for choice in item.metadata["choices"] if choice != default)
        return [flag, value], value
    word = kind(item)
    if word == "bool":
        return [flag if not default else "--no-" + flag[2:]], not default
    if word in ("int", "float"):
        value = default + (1 if word == "int" else 0.5)
        return [flag, str(value)], value
    return [flag, f"{item.name}-value"], f"{item.name}-value"


def test_every_setting_has_a_serve_flag_that_takes_a_value_of_its_type():
    argv, expected = ["serve"], {}
    for item in dataclasses.fields(Settings):
        arguments, expected[item.name] = _another_value(item)
        argv += arguments
    settings = serve_settings(build_parser().parse_args(argv), environ={})
    assert settings == Settings(**expected) != Settings()
    assert type(settings.port) is int and type(settings.heartbeat) is float and settings.cors_credentials is True


def test_serve_flags_win_over_variables_and_unset_flags_keep_them():
    environ = {"SSE_GATEWAY_PORT": "9001", "SSE_GATEWAY_HEARTBEAT": "2", "SSE_GATEWAY_CORS_CREDENTIALS": "true"}
    args = build_parser().parse_args(["serve", "--heartbeat", "3", "--no-cors-credentials"])
    settings = serve_settings(args, environ)
    assert (settings.port, settings.heartbeat, settings.cors_credentials) == (9001, 3.0, False)


def test_serve_help_names_each_setting_variable(capsys):
    with pytest.raises(SystemExit) as exited:
        main(["serve", "--help"])
    assert exited.value.code == 0
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    for item in dataclasses.fields(Settings):
        assert f"(SSE_GATEWAY_{item.name.upper()}; default " in text


def test_no_command_prints_help_and_fails(capsys):
    assert main([]) == 2
    assert "serve" in capsys.readouterr().out


def test_publish_many_sends_standard_input_as_one_batch_and_fails_when_a_line_is_refused(
    gateway, redis_server, channel
):
    lines = b'{"channel": "%s", "data": "one"}\n{"channel": "%s", "data": "two", "event": "tick"}\n' % (
        channel.encode(),
        channel.encode(),
    )
    result = _cli("publish-many", "--url", gateway.url, stdin=lines)
    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout)
    stored = _buffer(redis_server, channel)
    assert [r["id"] for r in answer["results"]] == [entry_id for entry_id, _ in stored]
    refused = _cli("publish-many", "--url", gateway.url, stdin=lines + b'{"channel": "bad name", "data": "x"}\n')
    assert refused.returncode == 1
    assert "1 of 3 events refused; line 3: bad_channel" in refused.stderr
    assert len(_buffer(redis_server, channel)) == 4, "the good lines of the refused batch were published"
