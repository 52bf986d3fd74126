"""gateway.fanout.writer under the installed uvicorn: each way writes a live stream's events in order, the direct way
engages where it may, and the gateway steps down (and says so once) where it must."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator

import httpx
import pytest
import uvicorn

from gateway.app import create_app
from gateway.config import Settings
from gateway.fanout import writer as writers
from gateway.fanout.writer import DirectWriter, PlainWriter, SteppedWriter, writer_for
from tests.servers import free_port, wait_until
from tests.streams import open_stream, publish


class Uvicorn:
    """An ASGI app served by uvicorn (httptools, as the gateway runs) in a thread of this process."""

    def __init__(self, app, http: str = "httptools") -> None:
        self.port = free_port()
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, http=http, log_level="warning", lifespan="auto")
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
    """Writes "one two " past send when the direct way may be used, then ends through send."""

    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        headers = [(b"content-length", b"6")] if scope["path"] == "/sized" else []
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        why_not = DirectWriter.usable(send)
        found.append((why_not, writer_for(send)))
        if why_not is None:
            writer = DirectWriter(send)
            assert writer.write(b"one ") is None and writer.write(b"two ") is None
            await send({"type": "http.response.body", "body": b"end", "more_body": False})
        else:
            await send({"type": "http.response.body", "body": b"sized!", "more_body": False})

    return app


@pytest.fixture(scope="module")
def served() -> Iterator[tuple[Uvicorn, list]]:
    found: list = []
    with Uvicorn(chunked_app(found)) as server:
        yield server, found


def test_direct_chunks_reach_the_client_in_order(served):
    server, found = served
    response = httpx.get(f"{server.url}/")
    assert response.status_code == 200
    assert response.headers["transfer-encoding"] == "chunked"
    assert response.content == b"one two end"
    why_not, writer = found[-1]
    assert why_not is None and isinstance(writer, DirectWriter)


def test_not_direct_for_a_response_with_a_content_length_or_for_head(served):
    server, found = served
    assert httpx.get(f"{server.url}/sized").content == b"sized!"
    why_not, writer = found[-1]
    assert "chunked" in why_not and isinstance(writer, SteppedWriter)
    assert httpx.head(f"{server.url}/").status_code == 200
    why_not, writer = found[-1]
    assert why_not == writers.NO_BODY and isinstance(writer, SteppedWriter)


def test_uvicorns_h11_send_is_stepped_and_said_once(caplog):
    found: list = []
    writers._declined.clear()
    with Uvicorn(chunked_app(found), http="h11") as server, caplog.at_level("WARNING", "gateway.fanout.writer"):
        for _ in range(2):
            assert httpx.get(f"{server.url}/").content == b"sized!"
    assert [type(writer) for _, writer in found] == [SteppedWriter, SteppedWriter]
    said = [r.getMessage() for r in caplog.records if r.name == "gateway.fanout.writer"]
    assert len(said) == 1 and "written stepped, not direct" in said[0] and "h11" in said[0].lower(), said


def test_a_send_the_gateway_does_not_know_is_written_plain():
    async def send(message: dict) -> None:
        pass

    assert DirectWriter.usable(send) is not None
    assert isinstance(writer_for(send), PlainWriter)
    assert isinstance(writer_for(send, "stepped"), SteppedWriter)


async def test_a_plain_write_waits_for_the_streams_task_and_a_dropped_one_never_runs():
    written: list[bytes] = []

    async def send(message: dict) -> None:
        written.append(message["body"])

    writer = PlainWriter(send)
    pending = writer.write(b"x")
    assert pending is not None and not pending.socket_full and written == []
    await pending.finish()
    assert written == [b"x"]
    writer.write(b"y").drop()
    assert written == [b"x"]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("way, kind", [("direct", DirectWriter), ("stepped", SteppedWriter), ("plain", PlainWriter)])
def test_the_gateway_streams_live_events_the_way_it_is_told(redis_server, channel, monkeypatch, way, kind):
    written: list[bytes] = []
    write = kind.write

    def counting_write(self, body: bytes):
        written.append(body)
        return write(self, body)

    monkeypatch.setattr(kind, "write", counting_write)  # observed, not replaced: the real write still runs
    app = create_app(Settings(redis_url=redis_server.url, auth="off", write_path=way))
    with Uvicorn(app) as server:

        async def check() -> None:
            async with open_stream(f"{server.url}/events/{channel}") as stream:
                await stream.read_raw_until(b"retry:")
                # An event that lands in the backlog read is written by the stream's own send; once the stream is
                # live, they all go through the writer. Publish until one has, then a few more, all in order.
                sent_through = None
                for attempt in range(60):
                    data = f"written {way} #{attempt}"
                    event_id = await publish(server.url, channel, data)
                    event = await stream.next_event()
                    assert (event.id, event.data) == (event_id, data)
                    if sent_through is None and any(data.encode() in body for body in written):
                        sent_through = attempt
                    if sent_through is not None and attempt >= sent_through + 5:
                        return
                raise AssertionError(f"no event went through {kind.__name__}")

        asyncio.run(check())
