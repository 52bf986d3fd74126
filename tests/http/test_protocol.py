"""Facing the internet: endless headers, half-open requests and connection floods, over real sockets."""

from __future__ import annotations

import asyncio
import json
import select
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.servers import GatewayProcess, wait_until
from tests.streams import open_stream, publish

HEAD_LIMIT = 16 * 1024  # the default


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def metric(gateway: GatewayProcess, line_start: str) -> float:
    for line in httpx.get(gateway.url + "/metrics", timeout=5).text.splitlines():
        if line.startswith(line_start):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=10)


def read_answer(sock: socket.socket, timeout: float = 10.0) -> bytes:
    """Everything the server sends until it closes (or resets) the connection."""
    sock.settimeout(timeout)
    answer = b""
    try:
        while chunk := sock.recv(65536):
            answer += chunk
    except ConnectionResetError:
        pass
    return answer


def json_body(answer: bytes) -> dict[str, str]:
    return json.loads(answer.split(b"\r\n\r\n", 1)[1])


@pytest.fixture(scope="module")
def gateway_limited(redis_server) -> Iterator[GatewayProcess]:
    process = GatewayProcess(redis_server.url, env={"SSE_GATEWAY_REQUEST_TIMEOUT": "2"}).start()
    yield process
    process.stop()


def _send_endless_header(port: int, total: int, report: dict[str, float | bytes | int]) -> None:
    """Sends a header that never ends, while watching for the answer; records when the limit was passed."""
    sock = connect(port)
    start = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: "
    sock.sendall(start)
    chunk = b"a" * 16384
    sent = len(start)
    answer = b""
    try:
        while sent < total:
            readable, writable, _ = select.select([sock], [sock], [], 5)
            if readable:
                data = sock.recv(65536)
                answer += data
                if not data or b"\r\n\r\n" in answer:
                    break
            if writable:
                sent += sock.send(chunk)
                if sent > HEAD_LIMIT and "passed" not in report:
                    report["passed"] = time.monotonic()
    except (ConnectionResetError, BrokenPipeError):
        pass
    report["answered"] = time.monotonic()
    report["sent"] = sent
    report["answer"] = answer
    sock.close()


@pytest.mark.timeout(90)
async def test_endless_headers_are_cut_off_with_431_and_do_not_grow_memory(gateway_limited, channel):
    pid = gateway_limited.process.pid
    before = rss_kib(pid)
    refused_before = metric(gateway_limited, 'sse_refused_total{limit="request_head_bytes"}')
    async with open_stream(f"{gateway_limited.url}/events/{channel}") as stream:
        await stream.read_raw_until(b"retry:")
        reports: list[dict[str, float | bytes | int]] = [{} for _ in range(5)]
        senders = [
            threading.Thread(target=_send_endless_header, args=(gateway_limited.port, 50 * 2**20, report))
            for report in reports
        ]
        for sender in senders:
            sender.start()
        event_id = await publish(gateway_limited.url, channel, "still served")  # while the five are sending
        assert (await stream.next_event()).id == event_id
        await asyncio.to_thread(lambda: [sender.join(60) for sender in senders])
    grown = rss_kib(pid) - before
    cut_off = max(report["answered"] - report["passed"] for report in reports)
    print(f"RSS grew {grown} KiB; the slowest cut-off came {cut_off:.3f}s after passing the limit")
    for report in reports:
        answer = report["answer"]
        assert isinstance(answer, bytes)
        if answer:  # answered rather than only closed
            assert answer.startswith(b"HTTP/1.1 431 "), answer[:200]
            assert json_body(answer)["error"] == "request_head_too_large"
        assert report["answered"] - report["passed"] < 1.0, "not cut off within a second of passing the limit"
        assert report["sent"] < 50 * 2**20, "the whole 50 MiB was taken in"
    assert any(report["answer"] for report in reports), "no client ever saw the 431"
    assert grown < 20 * 1024, f"RSS grew by {grown} KiB"
    refused = metric(gateway_limited, 'sse_refused_total{limit="request_head_bytes"}') - refused_before
    assert refused == 5


@pytest.mark.timeout(60)
def test_half_open_requests_are_closed_after_the_request_timeout(gateway_limited):
    sockets = [connect(gateway_limited.port) for _ in range(300)]
    started = time.monotonic()
    for sock in sockets:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # and then nothing
    served = 0
    while time.monotonic() - started < 1.5:  # a normal client is served while the 300 hang
        assert httpx.get(gateway_limited.url + "/healthz", timeout=5).status_code == 200
        served += 1
    answers = [read_answer(sock, timeout=10) for sock in sockets]
    closed_after = time.monotonic() - started
    print(f"300 half-open requests: the last closed {closed_after:.2f}s after they began (timeout 2 s)")
    for sock in sockets:
        sock.close()
    assert served > 0
    assert all(answer.startswith(b"HTTP/1.1 408 ") for answer in answers), {a[:40] for a in answers}
    assert json_body(answers[0])["error"] == "request_timeout"
    assert closed_after < 2 + 6, f"the last was closed {closed_after:.1f}s after they began"
    assert httpx.get(gateway_limited.url + "/healthz", timeout=5).status_code == 200


@pytest.mark.timeout(60)
def test_a_publish_body_sent_too_slowly_is_cut_off_and_publishes_nothing(gateway_limited, redis_server, channel):
    sock = connect(gateway_limited.port)
    head = f"POST /publish/{channel} HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n".encode()
    sock.sendall(head + b"only part of the body")
    answer = read_answer(sock, timeout=15)
    sock.close()
    assert answer == b"", "closed without an answer: the app was waiting for the body"
    assert redis_server.client().exists(f"sse:{{{channel}}}:buffer") == 0


@pytest.mark.timeout(60)
def test_a_body_on_the_stream_route_must_arrive_within_the_request_timeout(gateway_limited, channel):
    # The stream opens at once (it never reads a body), but its request is not complete until the body is in.
    sock = connect(gateway_limited.port)
    started = time.monotonic()
    sock.sendall(f"GET /events/{channel} HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\npart".encode())
    answer = read_answer(sock, timeout=15)
    closed_after = time.monotonic() - started
    sock.close()
    assert answer.startswith(b"HTTP/1.1 200 "), answer[:100]
    assert closed_after < 2 + 6, f"closed {closed_after:.1f}s after it began"


def test_a_request_pipelined_after_a_large_body_is_not_taken_for_a_long_head(gateway_limited, channel):
    # One read holds the end of a 40 KiB publish body and the start of the next request: only the latter is a head.
    body = b"x" * 40_000
    sock = connect(gateway_limited.port)
    sock.settimeout(10)
    sock.sendall(
        f"POST /publish/{channel} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n\r\n".encode()
        + body
        + b"GET /healthz HTTP/1.1\r\nHost: x\r\n"
    )
    first = b""
    while b"\r\n\r\n" not in first:  # the publish's answer: the server has read all of the above
        chunk = sock.recv(65536)
        assert chunk, "closed before answering the publish"
        first += chunk
    assert first.startswith(b"HTTP/1.1 201 "), first[:100]
    sock.sendall(b"Connection: close\r\n\r\n")
    rest = read_answer(sock)
    sock.close()
    assert b"HTTP/1.1 200 " in first + rest, (first + rest)[:400]


@pytest.mark.parametrize(
    "request_head",
    [
        "GET /events/x HTTP/1.1\r\nHost: x\r\nLast-Event-ID: {big}\r\n\r\n",
        "GET /events?{big} HTTP/1.1\r\nHost: x\r\n\r\n",
        "GET /events/x HTTP/1.1\r\nHost: x\r\nCookie: sse_token={big}\r\n\r\n",
        "GET /events/x?lastEventId={big} HTTP/1.1\r\nHost: x\r\n\r\n",
    ],
    ids=["last-event-id", "channel-list", "cookie", "query-string"],
)
def test_oversized_request_parts_get_a_431_with_a_json_error(gateway_limited, request_head):
    big = (
        "&".join(["channel=abcdefgh"] * (HEAD_LIMIT // 16 + 10))
        if "?{big}" in request_head
        else "a" * (HEAD_LIMIT + 100)
    )
    sock = connect(gateway_limited.port)
    sock.sendall(request_head.format(big=big).encode())
    answer = read_answer(sock)
    sock.close()
    assert answer.startswith(b"HTTP/1.1 431 "), answer[:100]
    assert json_body(answer)["error"] == "request_head_too_large"


@pytest.mark.parametrize(
    ("path", "params", "headers", "error"),
    [
        ("/events/x", {}, {"Last-Event-ID": "1-0," * 2000}, "bad_cursor"),
        ("/events", {"channel": [f"c{i}" for i in range(1000)]}, {}, "too_many_channels"),
    ],
    ids=["last-event-id", "channel-list"],
)
def test_large_but_allowed_heads_still_get_the_apps_own_400(gateway_limited, path, params, headers, error):
    response = httpx.get(gateway_limited.url + path, params=params, headers=headers, timeout=10)
    assert response.status_code == 400
    assert response.json()["error"] == error


@pytest.mark.timeout(60)
def test_past_the_connection_cap_a_connection_gets_503_until_one_closes(redis_server):
    env = {"SSE_GATEWAY_MAX_HTTP_CONNECTIONS": "20", "SSE_GATEWAY_REQUEST_TIMEOUT": "30"}
    gateway = GatewayProcess(redis_server.url, env=env).start()
    held: list[socket.socket] = []
    try:
        held = [connect(gateway.port) for _ in range(20)]
        wait_until(lambda: _refused(gateway.port), what="the 21st connection refused")
        extra = connect(gateway.port)
        extra.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        answer = read_answer(extra)
        extra.close()
        if answer:  # a client may also see only the close, as documented
            assert answer.startswith(b"HTTP/1.1 503 "), answer[:100]
            assert b"\r\nretry-after: 5\r\n" in answer.lower()
            assert json_body(answer)["error"] == "too_many_connections"
        held.pop().close()
        wait_until(lambda: not _refused(gateway.port), what="a place freed by a closed connection")
        for sock in held:
            sock.close()
        held = []
        assert metric(gateway, 'sse_refused_total{limit="max_http_connections"}') >= 1
    finally:
        for sock in held:
            sock.close()
        gateway.stop()


def _refused(port: int) -> bool:
    """Whether a new connection is turned away: a 503, or closed before any answer."""
    with connect(port) as probe:
        probe.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        answer = read_answer(probe)
    return not answer.startswith(b"HTTP/1.1 200 ")
