"""The SSE response under a client that stops reading: it is evicted, others are not held up, and it resumes."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator

import pytest

from sse_gateway_client import SSEParser
from tests.servers import GatewayProcess
from tests.streams import open_stream, publish_many, stalled_request


@pytest.fixture(scope="module")
def small_client_buffer_gateway(redis_server) -> Iterator[GatewayProcess]:
    env = {"SSE_GATEWAY_CLIENT_BUFFER_EVENTS": "16", "SSE_GATEWAY_CLIENT_BUFFER_BYTES": "262144"}
    process = GatewayProcess(redis_server.url, env=env).start()
    yield process
    process.stop()


def _read_to_end(sock: socket.socket) -> bytes:
    sock.settimeout(10)
    received = bytearray()
    while chunk := sock.recv(65536):
        received += chunk
    return bytes(received)


def _dechunk(raw: bytes) -> bytes:
    _, _, body = raw.partition(b"\r\n\r\n")
    out = bytearray()
    while body:
        size_line, _, rest = body.partition(b"\r\n")
        size = int(size_line, 16)
        if size == 0:
            break
        out += rest[:size]
        body = rest[size + 2 :]
    return bytes(out)


@pytest.mark.timeout(90)
async def test_stalled_client_is_evicted_while_others_get_everything_and_it_resumes(
    small_client_buffer_gateway, channel
):
    url = small_client_buffer_gateway.url
    stalled = stalled_request(small_client_buffer_gateway.port, f"/events/{channel}")
    payloads = [f"{i:04d}:" + "x" * 16000 for i in range(400)]
    async with open_stream(f"{url}/events/{channel}") as healthy:
        await healthy.read_raw_until(b"retry:")
        await asyncio.sleep(0.2)  # the stalled client's stream is open too
        ids = await publish_many(url, channel, payloads)
        received = await healthy.take(len(ids), timeout=20)
    assert [e.id for e in received] == ids

    body = _dechunk(await asyncio.to_thread(_read_to_end, stalled))  # the server closed it: recv reached EOF
    stalled.close()
    got = SSEParser().feed(body)
    assert 0 < len(got) < len(ids), "the stalled client was cut off before the end"
    assert [e.id for e in got] == ids[: len(got)], "what it did get is a clean prefix"

    async with open_stream(f"{url}/events/{channel}", last_event_id=got[-1].id) as resumed:
        rest = await resumed.take(len(ids) - len(got), timeout=20)
    assert [e.id for e in rest] == ids[len(got) :]
    assert "Exception in ASGI application" not in small_client_buffer_gateway.log()
