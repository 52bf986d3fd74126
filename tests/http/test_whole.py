"""A short JSON answer in one write under uvicorn's httptools protocol (gateway.http.whole), on a real uvicorn."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import threading
from collections.abc import Iterator

import httpx
import pytest

from gateway.http import whole
from gateway.http.whole import send_json
from tests.servers import ThreadedServer

writes: list[bytes] = []  # what the app's answers wrote to their transports, in order
watched: list[str] = []  # what a task waiting on receive() was told once the answer had gone (/watched)
watch_ended = threading.Event()  # set once that is recorded


class CountingTransport:
    """uvicorn's transport, with every write recorded."""

    def __init__(self, transport) -> None:
        self._transport = transport

    def write(self, data: bytes) -> None:
        writes.append(data)
        self._transport.write(data)

    def __getattr__(self, name: str):
        return getattr(self._transport, name)


async def app(scope, receive, send) -> None:
    if scope["type"] != "http":
        return
    while (await receive()).get("more_body"):
        pass
    cycle = send.__self__
    cycle.transport = CountingTransport(cycle.transport)
    # uvicorn's own access log off, as the gateway runs it (pytest's log capture would turn it on here), but where
    # a test asks for it: its line is written by uvicorn's send, so the answer must go through that.
    cycle.access_log = scope["path"] == "/logged"
    if scope["path"] == "/wrapped":
        original = send

        async def send(message) -> None:  # as the access log's or CORS's wrapper would
            await original(message)

    watching = asyncio.Event()

    async def watch() -> dict:  # as a disconnect watcher waits, in receive(), for the client to leave
        watching.set()
        return await receive()

    watcher = asyncio.ensure_future(watch()) if scope["path"] == "/watched" else None
    if watcher is not None:
        await watching.wait()  # it has run into receive() and waits there: the loop runs one task at a time
    await send_json(send, 201, {"channel": "é", "id": "1-0"}, one_write=scope["path"] != "/two")
    if watcher is not None:
        try:
            watched.append((await asyncio.wait_for(watcher, 5))["type"])
        except TimeoutError:
            watched.append("still waiting 5 s after the answer")
        watch_ended.set()


@pytest.fixture(scope="module")
def server() -> Iterator[ThreadedServer]:
    with ThreadedServer(app, access_log=False) as running:
        yield running


def test_the_answer_is_one_write_and_the_connection_serves_the_next_request(server):
    with httpx.Client(base_url=server.url) as client:
        for _ in range(3):  # on one kept-alive connection: each response was completed as uvicorn completes it
            writes.clear()
            response = client.post("/one", content=b"x")
            assert response.status_code == 201
            assert response.headers["content-type"] == "application/json"
            assert (
                response.content
                == json.dumps({"channel": "é", "id": "1-0"}, ensure_ascii=False).replace(" ", "").encode() + b"\n"
            )
            assert int(response.headers["content-length"]) == len(response.content)
            assert "date" in response.headers and "server" in response.headers, "uvicorn's default headers"
            assert len(writes) == 1, writes


@pytest.mark.parametrize("path", ["/two", "/wrapped", "/logged"])
def test_switched_off_behind_a_wrapped_send_or_with_uvicorns_access_log_it_is_two_messages_with_the_same_answer(
    server, path
):
    with httpx.Client(base_url=server.url) as client:
        writes.clear()
        response = client.post(path, content=b"x")
        assert response.status_code == 201 and response.json() == {"channel": "é", "id": "1-0"}
        assert len(writes) == 2, writes
        assert client.post(path).status_code == 201, "the connection serves the next request"


def test_a_client_that_asks_to_close_gets_connection_close_and_the_server_closes():
    # The keep-alive timeout is longer than the socket's: only the answer's own close ends the read in time.
    with (
        ThreadedServer(app, access_log=False, timeout_keep_alive=120) as server,
        socket.create_connection(("127.0.0.1", server.port)) as sock,
    ):
        writes.clear()
        sock.settimeout(10)
        sock.sendall(b"POST /one HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nConnection: close\r\n\r\nx")
        received = b""
        while chunk := sock.recv(65536):  # ends when the server closes the connection
            received += chunk
        head, _, body = received.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 201 Created\r\n")
        assert b"\r\nconnection: close" in head.lower()
        assert json.loads(body) == {"channel": "é", "id": "1-0"}
        assert len(writes) == 1


def test_pipelined_requests_are_each_answered_in_turn(server):
    # uvicorn starts a pipelined request only when the response before it says it is complete.
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        writes.clear()
        sock.settimeout(10)
        request = b"POST /one HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\nx"
        sock.sendall(request * 3)
        received = b""
        while received.count(b"HTTP/1.1 201 Created") < 3 or not received.endswith(b"}\n"):
            chunk = sock.recv(65536)
            assert chunk, f"the server closed the connection after {received!r}"
            received += chunk
        assert len(writes) == 3


def test_a_task_waiting_on_receive_is_told_at_once_that_the_response_is_complete(server):
    # uvicorn's send wakes it; so must the one write, or a disconnect watcher would wait until the client left.
    watched.clear()
    watch_ended.clear()
    with httpx.Client(base_url=server.url) as client:
        writes.clear()
        assert client.post("/watched", content=b"x").status_code == 201
        assert len(writes) == 1, writes
        assert watch_ended.wait(10), "the app records it after the answer"
        assert watched == ["http.disconnect"]


def test_a_send_that_is_not_uvicorns_own_is_logged_once(server, caplog):
    whole._declined.clear()  # once a process: as in one that has not yet declined (the tests above have)
    with caplog.at_level(logging.INFO, logger="gateway.http.whole"), httpx.Client(base_url=server.url) as client:
        for _ in range(3):
            assert client.post("/wrapped", content=b"x").status_code == 201
    declines = [r.getMessage() for r in caplog.records if r.name == "gateway.http.whole"]
    assert declines == [
        "JSON answers go as two ASGI messages, not one write: "
        "the answer's send is not uvicorn's httptools send (a middleware wraps it, or another server)"
    ]
