"""gateway.fanout.fastpath under the installed uvicorn: the writer engages where it may, gives up where it must."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator

import httpx
import pytest
import uvicorn

from gateway.app import create_app
from gateway.config import Settings
from gateway.fanout.fastpath import ChunkWriter
from tests.servers import free_port, wait_until
from tests.streams import open_stream, publish


class Uvicorn:
    """An ASGI app served by uvicorn (httptools, as the gateway runs) in a thread of this process."""

    def __init__(self, app) -> None:
        self.port = free_port()
        config = uvicorn.Config(
            app, host="127.0.0.1", port=self.port, http="httptools", log_level="warning", lifespan="auto"
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> Uvicorn:
        self.thread.start()
        wait_until(lambda: self.server.started, what="uvicorn in a thread", timeout=10)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)


def chunked_app(found: list) -> object:
    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        headers = [(b"content-length", b"6")] if scope["path"] == "/sized" else []
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        writer = ChunkWriter.for_send(send)
        found.append(writer)
        if writer is not None:
            assert writer.write(b"one ") and writer.write(b"two ")
            await send({"type": "http.response.body", "body": b"end", "more_body": False})
        else:
            await send({"type": "http.response.body", "body": b"sized!", "more_body": False})

    return app


@pytest.fixture(scope="module")
def served() -> Iterator[tuple[Uvicorn, list]]:
    found: list = []
    with Uvicorn(chunked_app(found)) as server:
        yield server, found


def test_chunks_written_past_send_reach_the_client_in_order(served):
    server, found = served
    response = httpx.get(f"{server.url}/")
    assert response.status_code == 200
    assert response.headers["transfer-encoding"] == "chunked"
    assert response.content == b"one two end"
    assert found[-1] is not None


def test_no_writer_for_a_response_with_a_content_length_or_for_head(served):
    server, found = served
    assert httpx.get(f"{server.url}/sized").content == b"sized!"
    assert found[-1] is None
    assert httpx.head(f"{server.url}/").status_code == 200
    assert found[-1] is None


def test_no_writer_for_a_send_that_is_not_uvicorns():
    async def send(message: dict) -> None:
        pass

    assert ChunkWriter.for_send(send) is None


@pytest.mark.timeout(30)
def test_the_gateway_streams_through_the_writer_under_uvicorn(redis_server, channel, monkeypatch):
    written: list[bytes] = []
    write = ChunkWriter.write

    def counting_write(self: ChunkWriter, body: bytes) -> bool:
        done = write(self, body)
        if done:
            written.append(body)
        return done

    monkeypatch.setattr(ChunkWriter, "write", counting_write)  # observed, not replaced: the real write still runs
    app = create_app(Settings(redis_url=redis_server.url, auth="off"))
    with Uvicorn(app) as server:

        async def check() -> None:
            async with open_stream(f"{server.url}/events/{channel}") as stream:
                await stream.read_raw_until(b"retry:")
                # An event that lands in the backlog read is written by the stream's own send; once the stream is
                # live, they all go through the writer. Publish until one has.
                for attempt in range(50):
                    data = f"through the fast path #{attempt}"
                    event_id = await publish(server.url, channel, data)
                    event = await stream.next_event()
                    assert (event.id, event.data) == (event_id, data)
                    if any(data.encode() in body for body in written):
                        return

        asyncio.run(check())
    assert any(b"data: through the fast path #" in body for body in written), "no event went through the writer"
