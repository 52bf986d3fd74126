"""The sse-gateway command as a user runs it: publish (through the gateway or Redis) and listen."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest

from gateway.cli import main
from tests.servers import wait_until


def _cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args], input=stdin, capture_output=True, text=True, timeout=30
    )


def test_publish_through_the_gateway_prints_the_id(gateway, redis_server, channel):
    result = _cli("publish", channel, "hello", "--event", "greeting", "--url", gateway.url)
    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout)
    entries = redis_server.client().xrange(f"sse:{{{channel}}}:buffer")
    assert [e[0].decode() for e in entries] == [answer["id"]]
    assert entries[0][1][b"e"] == b"greeting" and entries[0][1][b"d"] == b"hello"


def test_publish_reads_data_from_stdin(gateway, redis_server, channel):
    result = _cli("publish", channel, "-", "--url", gateway.url, stdin="line 1\nline 2\n")
    assert result.returncode == 0, result.stderr
    (entry,) = redis_server.client().xrange(f"sse:{{{channel}}}:buffer")
    assert entry[1][b"d"] == b"line 1\nline 2\n"


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
    listener = subprocess.Popen(
        [sys.executable, "-m", "gateway", "listen", channel, "--json", "--url", gateway.url],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        wait_until(lambda: redis_server.subscriptions(channel) == 1, what="the listener's subscription")
        event_id = redis_server.publish_with_script(channel, "two\nlines")
        line = json.loads(listener.stdout.readline())
        assert (line["id"], line["data"]) == (event_id, "two\nlines")
        listener.send_signal(signal.SIGINT)
        assert listener.wait(timeout=10) in (0, 130)
        assert "Traceback" not in listener.stderr.read()
    finally:
        listener.kill()


def test_no_command_prints_help_and_fails(capsys):
    assert main([]) == 2
    assert "serve" in capsys.readouterr().out
